"""Packaging for geventcomet: a long-poll Comet server on gevent."""
from setuptools import find_packages, setup

setup(
    name="geventcomet",
    version="0.1.0",
    description="A Comet (long-poll / Server-Sent Events) server on gevent greenlets",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["geventcomet", "geventcomet.*", "loadclient", "old_experiments"]),
    package_data={"geventcomet": ["static/*"]},
    install_requires=[
        # >= 25.4.1: fixes the chunked-trailer and Expect: 100-continue smuggling bugs in pywsgi.
        "gevent>=25.4.1",
    ],
    extras_require={
        # hiredis: redis-py parses replies in C (the publish path was ~15% of server CPU in RESP parsing).
        "redis": ["redis>=5.0", "hiredis>=2.0"],
        "gunicorn": ["gunicorn>=22.0"],
        # Subscriber and publisher tokens (--token-secret, --token-public-key); crypto for RS256/ES256.
        "jwt": ["PyJWT[crypto]>=2.8"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "h11>=0.14",
            "requests>=2.28",
            "ruff>=0.5",
            "mypy>=1.10",
            "redis>=5.0",
            "hiredis>=2.0",
            "gunicorn>=22.0",
            "PyJWT[crypto]>=2.8",
            "flask>=3.0",
        ],
    },
    entry_points={"console_scripts": ["geventcomet = geventcomet.cli:main"]},
)
