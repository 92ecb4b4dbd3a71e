/**
 * docs.js: the /docs page. It reads the bridge's own /openapi.json, lists the services by
 * package with each method's routes and message shapes, and offers a try-it form: REST for
 * unary methods (and any HTTP route), the WebSocket client (bridge.js) for streaming ones.
 *
 * The document is fetched again every few seconds and on focus; the bridge caches it per
 * registry snapshot, so an unchanged registry costs one cached response. Only methods whose
 * description changed are rebuilt, so a form being filled in or a stream being watched
 * survives a registration elsewhere.
 */

import { Bridge, codeName } from "/static/bridge.js";

const REFRESH_MS = 3000;
const VERBS = ["get", "put", "post", "delete", "patch"];
const STREAMING = new Set(["server_streaming", "client_streaming", "bidi_streaming"]);

const sectionsByKey = new Map(); // method key -> { signature, element }
let lastText = null;
let connected = null; // { url, promise of a Bridge }

/**
 * The WebSocket connection, opened on first use and again after it closes or the credential
 * changes. A browser cannot set headers on a WebSocket, so the credential goes in the upgrade's
 * query, where the bridge takes it: a bearer token as `access_token`, an API key under its
 * header's name (`?x-api-key=...`).
 */
function connection() {
  const query = upgradeCredential();
  const url = query ? `/ws?${new URLSearchParams(query)}` : "/ws";
  if (connected === null || connected.url !== url) {
    if (connected !== null) connected.promise.then((b) => b.close(), () => {});
    const promise = Bridge.connect(url);
    const entry = { url, promise };
    promise.then((bridge) => {
      bridge.onclose = () => connected === entry && (connected = null);
    }, () => connected === entry && (connected = null));
    connected = entry;
  }
  return connected.promise;
}

/**
 * The credential typed on the page ({} when none): a header of REST calls and, for WebSocket
 * calls, the upgrade's query, under the name the bridge's auth config uses (Authorization,
 * x-api-key...).
 */
function credential() {
  const name = document.getElementById("credential-header").value.trim().toLowerCase();
  const value = document.getElementById("credential-value").value.trim();
  return name && value ? { [name]: value } : {};
}

/**
 * The credential as the WebSocket upgrade's query ({ access_token } or { "x-api-key": ... }),
 * or null for one the upgrade cannot carry (Authorization of another scheme than Bearer).
 */
function upgradeCredential() {
  const [[name, value] = []] = Object.entries(credential());
  if (name === undefined) return null;
  if (name !== "authorization") return { [name]: value };
  const token = value.match(/^Bearer\s+(.+)$/i);
  return token ? { access_token: token[1] } : null;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

/** A description (a proto comment, or the bridge's own note), its `code` spans as code. */
function about(tag, text = "") {
  const node = el(tag, { class: "about" });
  text.split("`").forEach((part, i) => node.append(i % 2 ? el("code", { text: part }) : part));
  return node;
}

// --- The model: packages -> services -> methods, from the OpenAPI document. ---

/**
 * Group the document's operations by tag (a gRPC service, or an aggregate's section) and
 * within it by gRPC method (`x-grpc.method`), or by operationId for routes the bridge answers
 * itself.
 */
function model(doc) {
  const about = new Map((doc.tags || []).map((t) => [t.name, t.description || ""]));
  const services = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const verb of VERBS) {
      const op = item[verb];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "routes";
      if (!services.has(tag)) services.set(tag, new Map());
      const grpc = op["x-grpc"] || null;
      const key = grpc ? grpc.method : op.operationId || `${verb} ${path}`;
      const methods = services.get(tag);
      if (!methods.has(key)) {
        methods.set(key, { key, name: op.summary || key, grpc, routes: [] });
      }
      methods.get(key).routes.push({ verb, path, op, params: [...(item.parameters || []),
        ...(op.parameters || [])] });
    }
  }
  const packages = new Map();
  for (const [tag, methods] of [...services].sort(([a], [b]) => a.localeCompare(b))) {
    const cut = tag.lastIndexOf(".");
    const pkg = cut > 0 ? tag.slice(0, cut) : "";
    if (!packages.has(pkg)) packages.set(pkg, []);
    const list = [...methods.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const m of list) m.routes.sort((a, b) => isDefault(a) - isDefault(b));
    const short = tag.slice(cut + 1);
    packages.get(pkg).push({ name: tag, short, about: about.get(tag), methods: list });
  }
  return packages;
}

/** The `POST /pkg.Service/Method` route every method has; listed after its HTTP rules. */
function isDefault(route) {
  return route.op["x-grpc"] && route.path === `/${route.op["x-grpc"].method}` ? 1 : 0;
}

function resolve(schema, doc) {
  const ref = schema && schema.$ref;
  if (!ref) return schema || {};
  return doc.components.schemas[ref.split("/").pop()] || {};
}

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

/** The request message of a method: the full body of its default route, else of any. */
function requestSchema(method) {
  const bodies = method.routes.map((r) => jsonSchema(r.op.requestBody)
    || rawSchema(r.op.requestBody));
  const full = method.routes.findIndex((r) => isDefault(r));
  const body = (full >= 0 && bodies[full]) || bodies.find((b) => b) || null;
  return body && body.type === "array" ? body.items : body; // a streamed request: one message
}

function jsonSchema(holder) {
  const content = holder && holder.content;
  return (content && content["application/json"] && content["application/json"].schema) || null;
}

/** The schema of a raw body (a google.api.HttpBody sent as the bytes themselves), or null. */
function rawSchema(holder) {
  const content = holder && holder.content;
  return (content && content["*/*"] && content["*/*"].schema) || null;
}

/** The response message: the 200 JSON body, the `result` of each NDJSON line, or raw bytes. */
function responseSchema(method) {
  const ok = method.routes[0].op.responses && method.routes[0].op.responses["200"];
  if (!ok || !ok.content) return null;
  const lines = ok.content["application/x-ndjson"];
  if (lines && lines.schema && lines.schema.oneOf) return lines.schema.oneOf[0].properties.result;
  return jsonSchema(ok) || rawSchema(ok);
}

// --- Shapes: a message's fields as a table, with the messages it uses below it. ---

function typeName(schema) {
  if (!schema) return "any";
  if (schema.$ref) return refName(schema);
  if (schema.anyOf) {
    const kinds = schema.anyOf.filter((s) => s.type !== "null").map(typeName);
    return `${kinds.join(" | ")}?`;
  }
  if (schema.oneOf) return schema.oneOf.map(typeName).join(" | ");
  let type = Array.isArray(schema.type)
    ? `${schema.type.filter((t) => t !== "null").join(" | ")}?`
    : schema.type || "any";
  if (type.startsWith("array")) type = `${typeName(schema.items)}[]`;
  else if (type.startsWith("object") && schema.additionalProperties && !schema.properties) {
    const values = schema.additionalProperties;
    const value = values === true ? "any" : typeName(values);
    type = `map<string, ${value}>`;
  }
  if (schema.enum) type = `enum ${schema.enum.join(" | ")}`;
  if (schema.format) type += ` (${schema.format})`;
  return type;
}

function refsOf(schema, into) {
  if (!schema || typeof schema !== "object") return into;
  const name = refName(schema);
  if (name) into.add(name);
  for (const value of Object.values(schema)) {
    if (typeof value === "object") refsOf(value, into);
  }
  return into;
}

function fieldsTable(schema) {
  const props = Object.entries(schema.properties || {});
  if (props.length === 0) return el("p", { class: "about", text: "(no fields)" });
  const table = el("table", { class: "shape" },
    el("tr", {}, el("th", { text: "field" }), el("th", { text: "type" }), el("th", { text: "" })));
  for (const [name, field] of props) {
    table.append(el("tr", {}, el("td", {}, el("code", { text: name })),
      el("td", {}, el("code", { text: typeName(field) })),
      about("td", field.description)));
  }
  return table;
}

/** A message shape, then every message and enum it refers to, each once. */
function shape(title, schema, doc) {
  const heading = el("h4", { text: `${title}: ${typeName(schema)}` });
  const box = el("div", { class: `shape ${title.toLowerCase()}` }, heading);
  if (!schema) return box;
  const top = resolve(schema, doc);
  if (top.description) box.append(about("p", top.description));
  if (top.type === "object" || top.properties) box.append(fieldsTable(top));
  const seen = new Set([refName(schema)]);
  const queue = [...refsOf(top, new Set())];
  while (queue.length) {
    const name = queue.shift();
    if (seen.has(name)) continue;
    seen.add(name);
    const used = doc.components.schemas[name] || {};
    const more = el("details", { class: "used" }, el("summary", {}, el("code", { text: name })));
    if (used.description) more.append(about("p", used.description));
    more.append(used.enum ? el("p", {}, el("code", { text: used.enum.join(" | ") }))
      : fieldsTable(used));
    box.append(more);
    queue.push(...refsOf(used, new Set()));
  }
  return box;
}

// --- Try it over REST. ---

function restForm(method) {
  const form = el("form", { class: "rest" });
  const select = el("select", { class: "route", "aria-label": "route" });
  method.routes.forEach((r, i) => select.append(el("option", { value: String(i),
    text: `${r.verb.toUpperCase()} ${r.path}` })));
  const fields = el("div", { class: "params" });
  const status = el("p", { class: "status rest-status" });
  const result = el("pre", { class: "result rest-result" });
  const fill = () => {
    const route = method.routes[Number(select.value)];
    fields.replaceChildren();
    for (const p of route.params) {
      const input = el("input", { name: p.name, "data-in": p.in, size: "14",
        placeholder: p.required ? "required" : "", title: p.description || "" });
      fields.append(el("label", {}, `${p.name} `, input, " "));
    }
    if (rawSchema(route.op.requestBody)) { // sent as typed, under the Content-Type typed
      const type = el("input", { name: "Content-Type", "data-in": "header", size: "24",
        value: "text/plain; charset=utf-8", title: "the raw body's media type" });
      fields.append(el("label", {}, "Content-Type ", type, " "),
        el("textarea", { class: "body raw", "aria-label": "raw body" }));
    } else if (route.op.requestBody) {
      fields.append(el("textarea", { class: "body", "aria-label": "body", text: "{}" }));
    }
  };
  select.addEventListener("change", fill);
  fill();
  form.append(select, fields, el("button", { type: "submit", class: "send", text: "Send" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const route = method.routes[Number(select.value)];
    await sendRest(route, fields, status, result);
  });
  const heading = el("h4", { text: "Try it over REST" });
  return el("div", { class: "try rest" }, heading, form, status, result);
}

async function sendRest(route, fields, status, result) {
  let path = route.path;
  const query = new URLSearchParams();
  const init = { method: route.verb.toUpperCase(), headers: credential() };
  for (const input of fields.querySelectorAll("input")) {
    if (input.dataset.in === "path") {
      const value = input.value.split("/").map(encodeURIComponent).join("/");
      path = path.replace(`{${input.name}}`, value);
    } else if (input.dataset.in === "header") init.headers[input.name] = input.value;
    else if (input.value !== "") query.append(input.name, input.value);
  }
  const url = path + (query.size ? `?${query}` : "");
  const body = fields.querySelector("textarea.body");
  if (body) {
    init.body = body.value;
    if (!body.classList.contains("raw")) init.headers["Content-Type"] = "application/json";
  }
  status.className = "status rest-status";
  status.textContent = `${init.method} ${url} …`;
  result.textContent = "";
  try {
    const response = await fetch(url, init);
    const text = await response.text();
    status.textContent = `${response.status} ${response.statusText} · ${init.method} ${url}`;
    status.classList.add(response.ok ? "ok" : "error");
    result.textContent = pretty(text);
  } catch (error) {
    status.textContent = `failed: ${error.message}`;
    status.classList.add("error");
  }
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text; // NDJSON, SSE or a raw body: shown as it came
  }
}

// --- Try a stream over /ws. ---

function streamForm(method) {
  const kind = method.grpc.kind;
  const form = el("form", { class: "stream" });
  const message = el("textarea", { class: "message", "aria-label": "message", text: "{}" });
  const status = el("p", { class: "status stream-status" });
  const log = el("ol", { class: "messages" });
  const button = (name, text) => el("button", { type: "button", class: name, text });
  const state = { call: null };
  const show = (text, sent = false) => {
    log.append(el("li", sent ? { class: "sent", text } : { class: "received", text }));
    log.scrollTop = log.scrollHeight;
  };
  const setStatus = (text, cls = "") => {
    status.className = `status stream-status ${cls}`;
    status.textContent = text;
  };
  const parsed = () => {
    try {
      return JSON.parse(message.value || "{}");
    } catch (error) {
      setStatus(`not JSON: ${error.message}`, "error");
      return null;
    }
  };
  const watch = async (call, reading, received) => {
    setStatus("open");
    const finished = await call.status;
    await reading; // the messages are shown before the count
    if (state.call === call) state.call = null;
    const count = received();
    const what = `${codeName(finished.code)}${finished.message ? `: ${finished.message}` : ""}`;
    setStatus(`${what} · ${count} message${count === 1 ? "" : "s"}`,
      finished.code === 0 ? "ok" : "error");
  };
  const start = async (first) => {
    log.replaceChildren();
    let bridge;
    try {
      bridge = await connection();
    } catch (error) {
      setStatus(error.message, "error");
      return null;
    }
    let received = 0;
    // Sent at the upgrade, the credential is not repeated in each call (where it is no
    // credential to the bridge, only metadata passed on to the backend).
    const options = { metadata: upgradeCredential() ? {} : credential() };
    const call = kind === "server_streaming" ? bridge.serverStream(method.key, first, options)
      : kind === "client_streaming" ? bridge.clientStream(method.key, options)
        : bridge.bidi(method.key, options);
    state.call = call;
    const reading = kind === "client_streaming"
      ? call.response.then((r) => { received += 1; show(JSON.stringify(r)); }, () => {})
      : (async () => {
          try {
            for await (const m of call) { received += 1; show(JSON.stringify(m)); }
          } catch {
            // the status line says how it ended
          }
        })();
    watch(call, reading, () => received);
    return call;
  };
  if (kind === "server_streaming") {
    const go = button("start", "Start");
    go.addEventListener("click", async () => {
      const first = parsed();
      if (first === null) return;
      if (state.call) state.call.cancel();
      await start(first);
    });
    form.append(message, go);
  } else {
    const send = button("send", "Send");
    send.addEventListener("click", async () => {
      const next = parsed();
      if (next === null) return;
      const call = state.call || (await start());
      if (!call) return;
      call.send(next);
      show(`→ ${JSON.stringify(next)}`, true);
    });
    const end = button("end", "End");
    end.addEventListener("click", () => state.call && state.call.end());
    form.append(message, send, end);
  }
  const cancel = button("cancel", "Cancel");
  cancel.addEventListener("click", () => state.call && state.call.cancel());
  form.append(cancel);
  const how = kind === "server_streaming"
    ? "Start sends the request; messages appear as they arrive."
    : "Send opens the call and sends a message; End half-closes it.";
  return el("div", { class: "try stream" }, el("h4", { text: "Try it over /ws" }),
    el("p", { class: "about", text: how }), form, status, log);
}

// --- Rendering, keyed so that unchanged methods keep their state. ---

function methodSection(method, doc) {
  const kind = method.grpc ? method.grpc.kind : "http";
  const details = el("details", { class: "method", "data-method": method.key, "data-kind": kind },
    el("summary", { class: "head" }, el("strong", { text: method.name }),
      el("span", { class: `kind ${kind}`, text: kind.replace("_", " ") }),
      method.grpc ? el("code", { text: `  ${method.key}` }) : null));
  const first = method.routes[0].op;
  if (first.description) details.append(about("p", first.description));
  const routes = el("ul", { class: "routes" });
  for (const r of method.routes) {
    routes.append(el("li", {}, el("span", { class: "verb", text: r.verb.toUpperCase() }),
      el("code", { text: r.path })));
  }
  details.append(el("h4", { text: "Routes" }), routes);
  if (method.grpc) details.append(shape("Request", requestSchema(method), doc));
  details.append(shape("Response", responseSchema(method), doc));
  const streaming = method.grpc && STREAMING.has(method.grpc.kind);
  details.append(streaming ? streamForm(method) : restForm(method));
  return details;
}

function render(doc) {
  const packages = model(doc);
  const main = document.getElementById("packages");
  const toc = el("ul");
  const keep = new Set();
  const sections = [];
  let methodCount = 0;
  let serviceCount = 0;
  for (const [pkg, services] of packages) {
    const box = el("section", { class: "package", "data-package": pkg },
      el("h2", { text: pkg ? `package ${pkg}` : "bridge routes" }));
    for (const service of services) {
      serviceCount += 1;
      const id = `service-${service.name}`;
      toc.append(el("li", {}, el("a", { href: `#${id}`, text: service.name })));
      const part = el("section", { class: "service", id, "data-service": service.name },
        el("h3", { text: service.short }));
      if (service.about) part.append(about("p", service.about));
      for (const method of service.methods) {
        methodCount += 1;
        const signature = JSON.stringify([method, [...refsOf(method.routes, new Set())]
          .map((n) => doc.components.schemas[n])]);
        const key = `${service.name} ${method.key}`;
        keep.add(key);
        let entry = sectionsByKey.get(key);
        if (!entry || entry.signature !== signature) {
          entry = { signature, element: methodSection(method, doc) };
          sectionsByKey.set(key, entry);
        }
        part.append(entry.element); // moves a kept element, with its state
      }
      box.append(part);
    }
    sections.push(box);
  }
  for (const key of [...sectionsByKey.keys()]) if (!keep.has(key)) sectionsByKey.delete(key);
  main.replaceChildren(...sections);
  document.getElementById("toc").replaceChildren(toc);
  const status = document.getElementById("docs-status");
  status.className = "status ok";
  status.textContent = `${serviceCount} services, ${methodCount} methods`;
}

async function refresh() {
  if (document.hidden && lastText !== null) return; // a tab in the background need not poll
  try {
    const response = await fetch("/openapi.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`/openapi.json: HTTP ${response.status}`);
    const text = await response.text();
    if (text === lastText) return;
    render(JSON.parse(text));
    lastText = text;
  } catch (error) {
    const status = document.getElementById("docs-status");
    status.className = "status error";
    status.textContent = `cannot load the API description: ${error.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
window.addEventListener("focus", refresh);
