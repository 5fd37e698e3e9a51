// The Bayeux demo page: a Faye browser client of /bayeux (or ?server=URL), WebSocket off.
// window.bayeuxDemo holds its state (the browser tests read it).
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var endpoint = params.get("server") || location.origin + "/bayeux";
  var channel = params.get("channel") || "/chat/demo";
  var client = new Faye.Client(endpoint, {timeout: 30, retry: 1});
  client.disable("websocket");
  client.disable("eventsource");
  if (params.get("transport") === "callback-polling") {
    client.disable("long-polling");
    client.disable("cross-origin-long-polling");
  }
  var state = {received: [], subscribed: false, errors: [], published: 0};
  window.bayeuxDemo = state;
  var status = document.getElementById("status");
  var log = document.getElementById("log");
  document.getElementById("channel").value = channel;

  client.subscribe(channel, function (data) {
    state.received.push(data);
    var item = document.createElement("li");
    item.textContent = JSON.stringify(data);  // text, never markup
    log.appendChild(item);
  }).then(function () {
    state.subscribed = true;
    status.textContent = "subscribed to " + channel;
  }, function (error) {
    state.errors.push(String(error && error.message || error));
    status.textContent = "refused: " + state.errors[state.errors.length - 1];
  });

  state.publish = function (data) {
    return client.publish(channel, data).then(function () { state.published += 1; },
      function (error) { state.errors.push(String(error && error.message || error)); });
  };
  document.getElementById("publish").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = document.getElementById("text");
    state.publish({text: text.value});
    text.value = "";
  });
})();
