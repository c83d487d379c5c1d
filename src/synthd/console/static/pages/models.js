// Models page: /v1/models every 2 s (base models listed even when cold, fine-tunes with `parent`,
// each with synthd's status, gpu, node, load_seconds, error, requests_served, tokens_served).

document.addEventListener("alpine:init", () => {
  Alpine.data("modelsPage", () => ({
    fmt: synthd.fmt,
    models: [],
    gpuOptions: ["auto", "cpu"],
    form: { model: "", gpu: "" },
    notice: "",
    error: "",
    loaded: false,

    init() {
      this.stop = synthd.poll(() => this.refresh(), 2000, (exc) => (this.error = exc ? exc.message : ""));
      synthd.json("/v1/gpus").then((report) => {
        this.gpuOptions = ["auto", "cpu", ...report.catalog.map((g) => g.name)];
      }).catch(() => {});
    },

    destroy() {
      this.stop();
    },

    async refresh() {
      this.models = (await synthd.json("/v1/models")).data;
      this.loaded = true;
    },

    async warmUp(model, gpu) {
      model = model.trim();
      if (!model) return;
      this.notice = "";
      try {
        const answer = await synthd.json(`/warmup/${encodeURIComponent(model)}`, {
          method: "POST", body: { gpu_preference: gpu.trim() || null },
        });
        this.notice = `${answer.model}: ${answer.status.replace("_", " ")}${answer.gpu ? ` on ${answer.gpu}` : ""}`;
        await this.refresh();
      } catch (exc) {
        this.notice = exc.message;
      }
    },

    async remove(model) {
      if (!confirm(`Delete ${model} and its adapter?`)) return;
      try {
        await synthd.json(`/v1/models/${encodeURIComponent(model)}`, { method: "DELETE" });
        this.notice = `Deleted ${model}`;
        await this.refresh();
      } catch (exc) {
        this.notice = exc.message;
      }
    },

    playgroundLink(model) {
      const query = new URLSearchParams({ model: model.id });
      if (model.parent) query.set("compare", model.parent);
      return `${synthd.root}/playground?${query}`;
    },
  }));
});
