// Models page: /v1/models every 2 s. Entries that do not carry synthd's status fields yet, and
// models warmed from this page but not listed (cold base models), are completed from
// /warmup/status/{model}.

document.addEventListener("alpine:init", () => {
  Alpine.data("modelsPage", () => ({
    fmt: synthd.fmt,
    models: [],
    tracked: [],
    statuses: {},
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

    get rows() {
      const listed = this.models.map((m) => ({ ...this.statuses[m.id], ...m }));
      const extra = this.tracked
        .filter((id) => !this.models.some((m) => m.id === id))
        .map((id) => ({ id, parent: null, ...this.statuses[id] }));
      return [...listed, ...extra];
    },

    async refresh() {
      const list = await synthd.json("/v1/models");
      this.models = list.data;
      const missing = [...this.models.filter((m) => m.status === undefined).map((m) => m.id),
        ...this.tracked.filter((id) => !this.models.some((m) => m.id === id))];
      const statuses = await Promise.all(missing.map((id) =>
        synthd.json(`/warmup/status/${encodeURIComponent(id)}`).catch((exc) => ({ status: "failed", error: exc.message }))));
      missing.forEach((id, index) => (this.statuses[id] = statuses[index]));
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
        if (!this.tracked.includes(answer.model)) this.tracked.push(answer.model);
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
        this.tracked = this.tracked.filter((id) => id !== model);
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
