// Playground: streamed /v1/chat/completions for one or two models at once. TTFT is measured here,
// from sending the request to the first content delta; tok/s is the decode rate after the first
// token, (completion_tokens - 1) / (end - first token), with completion_tokens from the stream's
// usage chunk (stream_options.include_usage) or, until it arrives, the number of content deltas.

function newPanel(model) {
  return { model, messages: [], partial: "", streaming: false, error: "", controller: null,
    stats: { ttft_s: null, tokens: 0, tokens_per_s: null } };
}

document.addEventListener("alpine:init", () => {
  Alpine.data("playground", () => ({
    modelIds: [],
    panels: [newPanel(""), newPanel("")],
    compare: false,
    system: "",
    temperature: 0.7,
    maxTokens: 256,
    prompt: "",
    error: "",

    async init() {
      const query = new URLSearchParams(location.search);
      const wanted = [query.get("model"), query.get("compare")].filter(Boolean);
      this.compare = Boolean(query.get("compare"));
      try {
        const list = await synthd.json("/v1/models");
        this.modelIds = [...new Set([...wanted, ...list.data.map((m) => m.id)])];
        const fineTune = list.data.find((m) => m.parent);
        this.panels[0].model = wanted[0] || (fineTune ? fineTune.id : this.modelIds[0] || "");
        this.panels[1].model = wanted[1] || (fineTune ? fineTune.parent : this.modelIds[1] || this.modelIds[0] || "");
      } catch (exc) {
        this.modelIds = wanted;
        this.panels[0].model = wanted[0] || "";
        this.panels[1].model = wanted[1] || "";
        if (exc.status !== 401) this.error = exc.message;
      }
    },

    get activePanels() {
      return this.compare ? this.panels : [this.panels[0]];
    },

    get busy() {
      return this.panels.some((p) => p.streaming);
    },

    send() {
      const content = this.prompt.trim();
      if (!content || this.busy) return;
      this.prompt = "";
      this.error = "";
      for (const panel of this.activePanels) {
        panel.messages.push({ role: "user", content });
        this.stream(panel);
      }
    },

    stopAll() {
      this.panels.forEach((p) => p.controller && p.controller.abort());
    },

    clear() {
      this.panels = this.panels.map((p) => newPanel(p.model));
    },

    async stream(panel) {
      const messages = [...(this.system.trim() ? [{ role: "system", content: this.system.trim() }] : []), ...panel.messages];
      panel.error = "";
      panel.partial = "";
      panel.streaming = true;
      panel.stats = { ttft_s: null, tokens: 0, tokens_per_s: null };
      panel.controller = new AbortController();
      const started = performance.now();
      let firstAt = null;
      let deltas = 0;
      let usageTokens = null;
      const update = () => {
        const tokens = usageTokens ?? deltas;
        const decodeS = (performance.now() - firstAt) / 1000;
        panel.stats = { ttft_s: (firstAt - started) / 1000, tokens,
          tokens_per_s: tokens > 1 && decodeS > 0 ? (tokens - 1) / decodeS : null };
      };
      try {
        const response = await synthd.request("/v1/chat/completions", {
          method: "POST", signal: panel.controller.signal,
          body: { model: panel.model, messages, temperature: this.temperature, max_tokens: this.maxTokens,
            stream: true, stream_options: { include_usage: true } },
        });
        for await (const data of synthd.sseData(response)) {
          if (data === "[DONE]") break;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usageTokens = chunk.usage.completion_tokens;
          const text = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
          if (text) {
            if (firstAt === null) firstAt = performance.now();
            deltas += 1;
            panel.partial += text;
          }
          if (firstAt !== null) update();
        }
      } catch (exc) {
        if (exc.name !== "AbortError") panel.error = exc.message;
      } finally {
        if (panel.partial) panel.messages.push({ role: "assistant", content: panel.partial });
        panel.partial = "";
        panel.streaming = false;
        panel.controller = null;
      }
    },
  }));
});
