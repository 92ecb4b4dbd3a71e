// The demo page: three widgets over one bridge.js connection to the example services.
import { Bridge, Code } from "./bridge.js";

const USERS = "demo.users.v1.UserService";
const ECHO = "demo.echo.v1.EchoService";

const $ = (id) => document.getElementById(id);

/** A new element with the given text (never parsed as HTML). */
function element(tag, text = "", className = "") {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  return node;
}

/** Show a widget's status line; kind is "", "ok" or "error". */
function setStatus(id, text, kind = "") {
  const line = $(id);
  line.textContent = text;
  line.className = `status ${kind}`.trim();
}

/** Append a connection-level problem to #errors. */
function reportError(text) {
  $("errors").append(element("li", text));
}

/** Append an item to a list and keep it scrolled to the newest. */
function appendItem(list, item) {
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

// --- Get user: a unary call --------------------------------------------------------------

function setupUser(bridge) {
  const button = $("get-user");
  $("user-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("user-id").value.trim();
    button.disabled = true;
    $("user-result").replaceChildren();
    setStatus("user-status", `calling GetUser(${JSON.stringify(id)})…`);
    try {
      showUser(await bridge.unary(`${USERS}/GetUser`, { id }, { timeout: 5 }));
      setStatus("user-status", "OK", "ok");
    } catch (error) {
      setStatus("user-status", error.message, "error");
    } finally {
      button.disabled = false;
    }
  });
  button.disabled = false;
}

function showUser(user) {
  const rows = [
    ["Name", user.displayName],
    ["Email", user.email],
    ["Role", user.role],
    ["City", user.address?.city],
    ["Tags", (user.tags ?? []).join(", ")],
    ["Karma", user.karma],
  ];
  $("user-result").replaceChildren(
    ...rows.flatMap(([label, value]) => [element("dt", label), element("dd", value ?? "")]),
  );
}

// --- Live feed: a server stream ----------------------------------------------------------

function setupFeed(bridge) {
  const start = $("feed-start");
  const stop = $("feed-stop");
  let current = null;

  $("feed-form").addEventListener("submit", (event) => {
    event.preventDefault();
    current?.cancel();
    const request = {
      count: Number($("feed-count").value),
      intervalMs: Number($("feed-interval").value),
      prefix: "tick ",
    };
    current = bridge.serverStream(`${ECHO}/Tick`, request);
    stop.disabled = false;
    readFeed(current);
  });
  stop.addEventListener("click", () => current?.cancel());
  start.disabled = false;

  async function readFeed(stream) {
    const list = $("feed-list");
    list.replaceChildren();
    setStatus("feed-status", "waiting for the first event…");
    let received = 0;
    try {
      for await (const tick of stream) {
        const item = element("li", tick.text);
        item.dataset.seq = tick.seq;
        appendItem(list, item);
        received += 1;
        setStatus("feed-status", `streaming… ${received} received`);
      }
      const { code } = await stream.status;
      const done = code === Code.CANCELLED ? "stopped" : "done";
      if (stream === current) setStatus("feed-status", `${done}: ${received} events`, "ok");
    } catch (error) {
      if (stream === current) setStatus("feed-status", error.message, "error");
    }
    if (stream === current) stop.disabled = true;
  }
}

// --- Chat: a bidirectional stream --------------------------------------------------------

function setupChat(bridge) {
  const input = $("chat-input");
  const endButton = $("chat-end");
  let chat = null;

  function openChat() {
    const call = bridge.bidi(`${ECHO}/Chat`);
    listen(call);
    endButton.disabled = false;
    return call;
  }

  async function listen(call) {
    try {
      for await (const reply of call) {
        const item = element("li", `${reply.user}: ${reply.text}`, "reply");
        item.dataset.seq = reply.seq;
        appendItem($("chat-log"), item);
        setStatus("chat-status", `chat open: ${reply.seq} replies`, "ok");
      }
      setStatus("chat-status", "chat ended; send again to start a new one");
    } catch (error) {
      setStatus("chat-status", `${error.message}; send again to start a new chat`, "error");
    } finally {
      if (chat === call) closeChat();
    }
  }

  function closeChat() {
    chat = null;
    endButton.disabled = true;
  }

  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const user = $("chat-name").value.trim() || "me";
    chat ??= openChat();
    chat.send({ user, text });
    appendItem($("chat-log"), element("li", `${user}: ${text}`, "mine"));
    input.value = "";
    setStatus("chat-status", "sent; waiting for the echo…");
  });
  endButton.addEventListener("click", () => {
    chat?.end();
    closeChat();
  });
  $("chat-send").disabled = false;
}

// --- Start -------------------------------------------------------------------------------

async function main() {
  let bridge;
  try {
    bridge = await Bridge.connect();
  } catch (error) {
    setStatus("conn-status", error.message, "error");
    reportError(error.message);
    return;
  }
  bridge.onerror = (error) => reportError(`the bridge refused a frame: ${error.message}`);
  bridge.onclose = (event) => {
    setStatus("conn-status", `closed (code ${event.code}); reload to reconnect`, "error");
    reportError(`connection closed (code ${event.code})`);
    for (const button of document.querySelectorAll("button")) button.disabled = true;
  };
  setStatus("conn-status", "connected", "ok");
  setupUser(bridge);
  setupFeed(bridge);
  setupChat(bridge);
  document.body.dataset.ready = "true";
}

main();
