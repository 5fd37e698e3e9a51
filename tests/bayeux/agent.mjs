// A real Bayeux client (the unmodified npm `faye` or `cometd` + `cometd-nodejs-client`),
// long-polling only (WebSocket disabled), driven by pytest: JSON commands on stdin, one
// per line; JSON events on stdout, one per line.
//
//   node agent.mjs faye|cometd URL [TOKEN]
//
// commands: {"op": "subscribe", "channel": C}        -> {"ev": "subscribed", "channel": C}
//           {"op": "unsubscribe", "channel": C}      -> {"ev": "unsubscribed", "channel": C}
//           {"op": "publish", "channel": C, "data": D, "count": N}
//                 N messages {"n": i, "data": D} one after another, each acknowledged first
//                                                    -> {"ev": "published", "channel": C, "count": N}
//           {"op": "exit"}
// events:   {"ev": "handshake", "clientId": ..}  (each successful handshake, re-handshakes too)
//           {"ev": "message", "sub": S, "channel": C, "data": D}
//           {"ev": "failed", "op": .., "error": ..}
import readline from "node:readline";

const [kind, url, token] = process.argv.slice(2);
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

async function fayeClient() {
    const faye = (await import("faye")).default;
    const client = new faye.Client(url, {timeout: 20, retry: 0.2});
    client.disable("websocket");
    client.disable("eventsource");
    client.addExtension({
        outgoing(message, callback) {
            if (message.channel === "/meta/handshake" && token) message.ext = {token};
            callback(message);
        },
        incoming(message, callback) {
            if (message.channel === "/meta/handshake" && message.successful) {
                emit({ev: "handshake", clientId: message.clientId});
            }
            callback(message);
        },
    });
    const subs = {};
    return {
        subscribe(channel) {
            const sub = client.subscribe(channel).withChannel(
                (actual, data) => emit({ev: "message", sub: channel, channel: actual, data}));
            subs[channel] = sub;
            return new Promise((resolve, reject) => sub.then(resolve, reject));
        },
        unsubscribe(channel) {
            subs[channel].cancel();
            return Promise.resolve();
        },
        publish(channel, data) {
            return new Promise((resolve, reject) => client.publish(channel, data).then(resolve, reject));
        },
        connect() { client.connect(); return Promise.resolve(); },
        exit() { client.disconnect(); },
    };
}

async function cometdClient() {
    const {adapt} = await import("cometd-nodejs-client");
    const {CometD} = await import("cometd");
    adapt();
    const cometd = new CometD();
    cometd.unregisterTransport("websocket");
    cometd.configure({url, logLevel: "warn", backoffIncrement: 100, maxBackoff: 500});
    const wanted = new Map();  // channel -> its subscription, redone after every handshake
    const subscribe = (channel) => new Promise((resolve, reject) => {
        const handle = cometd.subscribe(channel,
            (message) => emit({ev: "message", sub: channel, channel: message.channel, data: message.data}),
            (reply) => reply.successful ? resolve() : reject(new Error(reply.error)));
        wanted.set(channel, handle);
    });
    cometd.addListener("/meta/handshake", (message) => {
        if (!message.successful) return;
        emit({ev: "handshake", clientId: message.clientId});
        if (message.reestablish) {
            // CometD's own advice: subscriptions are redone in the handshake listener.
            cometd.batch(() => { for (const channel of wanted.keys()) subscribe(channel).catch(() => {}); });
        }
    });
    await new Promise((resolve, reject) => cometd.handshake(token ? {ext: {token}} : {},
        (reply) => reply.successful ? resolve() : reject(new Error(reply.error || "handshake failed"))));
    return {
        subscribe,
        unsubscribe(channel) {
            const handle = wanted.get(channel);
            wanted.delete(channel);
            return new Promise((resolve) => cometd.unsubscribe(handle, () => resolve()));
        },
        publish(channel, data) {
            return new Promise((resolve, reject) => cometd.publish(channel, data,
                (reply) => reply.successful ? resolve() : reject(new Error(reply.error || "publish failed"))));
        },
        connect() { return Promise.resolve(); },
        exit() { cometd.disconnect(); },
    };
}

async function run(client, command) {
    const {op, channel} = command;
    if (op === "subscribe") {
        await client.subscribe(channel);
        emit({ev: "subscribed", channel});
    } else if (op === "unsubscribe") {
        await client.unsubscribe(channel);
        emit({ev: "unsubscribed", channel});
    } else if (op === "publish") {
        const count = command.count ?? 1;
        for (let n = 0; n < count; n++) {
            for (let attempt = 0; ; attempt++) {  // a publish that failed (a worker killed) is sent again
                try {
                    await client.publish(channel, {n, data: command.data ?? null});
                    break;
                } catch (error) {
                    if (attempt >= 20) throw error;
                    await new Promise((resolve) => setTimeout(resolve, 100));
                }
            }
        }
        emit({ev: "published", channel, count});
    } else if (op === "exit") {
        client.exit();
        setTimeout(() => process.exit(0), 200);
    }
}

const client = kind === "faye" ? await fayeClient() : await cometdClient();
await client.connect();
emit({ev: "ready"});
const lines = readline.createInterface({input: process.stdin});
let queue = Promise.resolve();
lines.on("line", (line) => {
    const command = JSON.parse(line);
    queue = queue.then(() => run(client, command))
        .catch((error) => emit({ev: "failed", op: command.op, channel: command.channel, error: String(error)}));
});
lines.on("close", () => process.exit(0));
