// Shared by every console page: the API client (key from localStorage, OpenAI error envelope),
// polling, SSE parsing and formatting. Page scripts register Alpine components on `alpine:init`.

const synthd = (() => {
  const root = document.body.dataset.root || "";
  const KEY_STORAGE = "synthd.apiKey";

  class ApiError extends Error {
    // `status` is the HTTP status; `error` OpenAI's {message, type, param, code} when the body had one.
    constructor(status, message, error) {
      super(message);
      this.status = status;
      this.error = error || null;
    }
  }

  function apiKey() {
    return localStorage.getItem(KEY_STORAGE) || "";
  }

  // fetch() against the server with the stored key. `body` is sent as JSON, `form` as multipart.
  // Resolves to the Response when it is 2xx; rejects with ApiError otherwise (a 401 also opens
  // the key dialog).
  async function request(path, { method = "GET", body, form, signal } = {}) {
    const headers = {};
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let payload = form;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const response = await fetch(root + path, { method, headers, body: payload, signal });
    if (response.ok) return response;
    let error = null;
    try {
      error = (await response.json()).error || null;
    } catch (_) {
      // not JSON: keep the status text
    }
    const message = (error && error.message) || `${response.status} ${response.statusText}`;
    if (response.status === 401 && window.Alpine) Alpine.store("auth").ask(message);
    throw new ApiError(response.status, message, error);
  }

  async function json(path, options) {
    return (await request(path, options)).json();
  }

  // Calls `fn` now and then every `ms` after it settles; returns a function that stops it.
  // Errors go to `onError` (401s are left to the key dialog).
  function poll(fn, ms, onError) {
    let timer = null;
    let stopped = false;
    const tick = async () => {
      try {
        await fn();
        if (onError) onError(null);
      } catch (exc) {
        if (onError && !(exc instanceof ApiError && exc.status === 401)) onError(exc);
      } finally {
        if (!stopped) timer = setTimeout(tick, ms);
      }
    };
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  // The `data:` payloads of a text/event-stream Response, one string per event.
  async function* sseData(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (const event of events) {
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  }

  // All pages of a newest-first list (`data`, `has_more`, cursor `after` = last id), stopping at
  // the first id already in `known` (a Set). Returns the new items, newest first.
  async function newerItems(path, known) {
    const items = [];
    let after = null;
    for (;;) {
      const query = `limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`;
      const page = await json(`${path}?${query}`);
      for (const item of page.data) {
        if (known.has(item.id)) return items;
        items.push(item);
      }
      if (!page.has_more || !page.data.length) return items;
      after = page.data[page.data.length - 1].id;
    }
  }

  const fmt = {
    time(unix) {
      return unix ? new Date(unix * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "—";
    },
    dateTime(unix) {
      if (!unix) return "—";
      const date = new Date(unix * 1000);
      const today = new Date().toDateString() === date.toDateString();
      return today ? fmt.time(unix) : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    },
    duration(seconds) {
      if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
      if (seconds < 10) return `${seconds.toFixed(1)} s`;
      if (seconds < 90) return `${Math.round(seconds)} s`;
      const minutes = Math.floor(seconds / 60);
      if (minutes < 90) return `${minutes} min ${Math.round(seconds % 60)} s`;
      return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
    },
    number(value, digits = 0) {
      if (value === null || value === undefined) return "—";
      return Number(value).toLocaleString([], { maximumFractionDigits: digits, minimumFractionDigits: digits });
    },
    loss(value) {
      return value === null || value === undefined ? "—" : Number(value).toFixed(4);
    },
    hyperparameters(hyper) {
      const parts = [];
      if (hyper.n_epochs !== undefined) parts.push(`epochs ${hyper.n_epochs}`);
      if (hyper.batch_size !== undefined) parts.push(`batch ${hyper.batch_size}`);
      if (hyper.learning_rate_multiplier !== undefined) parts.push(`lr × ${hyper.learning_rate_multiplier}`);
      if (hyper.beta !== undefined) parts.push(`β ${hyper.beta}`);
      return parts.length ? parts.join(" · ") : "auto";
    },
  };

  const TERMINAL_JOB_STATUSES = ["succeeded", "failed", "cancelled"];

  return { root, KEY_STORAGE, ApiError, apiKey, request, json, poll, sseData, newerItems, fmt, TERMINAL_JOB_STATUSES };
})();

document.addEventListener("alpine:init", () => {
  // The key dialog: opened by any 401, the key kept in localStorage and sent as a bearer token.
  Alpine.store("auth", {
    key: synthd.apiKey(),
    needed: false,
    message: "",
    draft: "",
    ask(message) {
      this.message = this.key ? "The stored key was rejected." : message;
      this.needed = true;
    },
    save() {
      const key = this.draft.trim();
      if (!key) return;
      localStorage.setItem(synthd.KEY_STORAGE, key);
      this.key = key;
      this.draft = "";
      this.needed = false;
    },
    forget() {
      localStorage.removeItem(synthd.KEY_STORAGE);
      this.key = "";
    },
  });
});
