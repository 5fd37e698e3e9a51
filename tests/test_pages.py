"""The Notify page, and the app's WSGI conformance."""
import re
from html.parser import HTMLParser
from pathlib import Path
from wsgiref.validate import validator

import gevent
import requests

from geventcomet import Config, make_app
from geventcomet.server import CometServer

from .helpers import Comet, RunningServer


class FormReader(HTMLParser):
    """Collects the first form's action, method and named fields, as a browser would see them."""

    def __init__(self):
        super().__init__()
        self.action = self.method = None
        self.fields = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action, self.method = attrs.get("action"), attrs.get("method", "get").upper()
        elif tag in ("input", "textarea") and attrs.get("name"):
            self.fields.append(attrs["name"])


def test_submitting_the_notify_page_form_wakes_a_waiter(server):
    comet = Comet(server.url)
    poll = gevent.spawn(comet.register, "page", timeout=20)
    server.wait_waiting(1)
    page = requests.get(server.url + "/notify", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert re.search(r"<td>page</td><td>1</td>", page.text)  # the channel and its one waiter
    form = FormReader()
    form.feed(page.text)
    assert form.method == "POST" and {"channel", "data"} <= set(form.fields)
    sent = requests.post(server.url + form.action, data={"channel": "page", "data": "from the form"},
                         headers={"Accept": "text/html"}, timeout=10)
    assert sent.status_code == 200 and "Sent event #1 to page, waking 1" in sent.text
    assert poll.get(timeout=5)["events"] == [{"channel": "page", "id": 1, "data": "from the form"}]
    # the page after a send keeps the channel for the next one
    assert re.search(r'<input name="channel" id="channel" value="page"', sent.text)


def test_the_notify_page_counts_waiting_requests_in_good_english(server):
    comet = Comet(server.url)
    assert "<p id=\"waiting\">0 requests waiting" in requests.get(server.url + "/notify", timeout=10).text
    poll = gevent.spawn(comet.register, "one", timeout=20)
    server.wait_waiting(1)
    page = requests.get(server.url + "/notify", timeout=10).text
    assert "<p id=\"waiting\">1 request waiting in this process.</p>" in page
    assert '<input name="channel" id="channel" value=""' in page  # nothing sent yet: empty
    comet.notify("one", 1)
    poll.get(timeout=5)


def test_the_notify_page_says_its_data_is_a_string_and_what_json_needs(server):
    page = requests.get(server.url + "/notify", timeout=10).text
    assert "Data is sent as a string" in page and "application/json" in page
    comet = Comet(server.url)
    poll = gevent.spawn(comet.register, "typed", timeout=20)
    server.wait_waiting(1)
    requests.post(server.url + "/notify", data={"channel": "typed", "data": '{"a": 1}'}, timeout=10)
    assert poll.get(timeout=5)["events"][0]["data"] == '{"a": 1}'  # what the hint says


def test_the_js_client_is_served_with_the_package_version(server):
    import geventcomet
    served = requests.get(server.url + "/geventcomet.js", timeout=10).text
    assert f"version: '{geventcomet.__version__}'" in served
    assert "@GEVENTCOMET_VERSION@" not in served
    source = (Path(geventcomet.__file__).parent / "static" / "geventcomet.js").read_text()
    assert re.findall(r"version: '([^']*)'", source) == ["@GEVENTCOMET_VERSION@"]  # no second source


def test_the_notify_page_escapes_what_it_shows(server):
    page = requests.get(server.url + "/notify", params={"sent": "<script>x</script>", "id": "1"}, timeout=10)
    assert "<script>x</script>" not in page.text and "&lt;script&gt;" in page.text


def test_the_app_passes_wsgiref_validate():
    """Every route, /register included: a wrapped app gets no fast path."""
    config = Config(port=0)
    app = make_app(config)
    server = CometServer(("127.0.0.1", 0), app, config)
    validated, seen = validator(app), []

    def application(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return validated(environ, start_response)

    server.application = application
    server.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        comet = Comet(url)
        poll = gevent.spawn(comet.register, "v", timeout=10)
        RunningServer(server).wait_waiting(1)
        comet.notify("v", 1)
        assert poll.get(timeout=5)["events"]
        assert comet.register("v", timeout=0)["timeout"] is True
        for path, status in (("/stats", 200), ("/notify", 200), ("/", 200), ("/missing", 404)):
            assert requests.get(url + path, timeout=10).status_code == status
        assert requests.head(url + "/stats", timeout=10).status_code == 200
        assert requests.post(url + "/notify", data=b"{", timeout=10,
                             headers={"Content-Type": "application/json"}).status_code == 400
        with requests.get(url + "/stream?channel=v", stream=True, timeout=10) as stream:
            assert stream.status_code == 200 and next(stream.iter_lines()) == b"event: hello"
        assert requests.head(url + "/stream?channel=v", timeout=10).status_code == 200
        assert seen.count("/register") == 2 and "/stream" in seen
    finally:
        server.stop_gracefully()
