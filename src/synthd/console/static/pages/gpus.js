// GPUs page: GET /v1/gpus every 3 s, devices grouped by node; the "will it fit?" form posts to
// /v1/gpus/validate and turns its answer (valid, fits, available, selected, reason) into a verdict.

function fitVerdict(answer) {
  const memory = { required_gib: answer.required_gib, offered_gib: answer.offered_gib };
  if (!answer.valid) return { tone: "bad", title: "Invalid preference.", detail: answer.reason, ...memory };
  if (!answer.fits) return { tone: "bad", title: "Does not fit.", detail: answer.reason, ...memory };
  if (!answer.available) return { tone: "warn", title: "Fits, but not available now.", detail: answer.reason, ...memory };
  return { tone: "good", title: `Fits: would run on ${answer.selected}.`, detail: "", ...memory };
}

document.addEventListener("alpine:init", () => {
  Alpine.data("gpusPage", () => ({
    fmt: synthd.fmt,
    inventory: [],
    catalog: [],
    modelIds: [],
    error: "",
    fit: { model: "", gpu_preference: "", purpose: "inference" },
    verdict: null,

    init() {
      this.stop = synthd.poll(() => this.refresh(), 3000, (exc) => (this.error = exc ? exc.message : ""));
      synthd.json("/v1/models").then((list) => {
        this.modelIds = list.data.filter((m) => !m.parent).map((m) => m.id);
        if (!this.fit.model) this.fit.model = this.modelIds[0] || "";
      }).catch(() => {});
    },

    destroy() {
      this.stop();
    },

    get gpuOptions() {
      return ["auto", "cpu", ...this.catalog.map((g) => g.name)];
    },

    get nodes() {
      const nodes = new Map();
      for (const device of this.inventory) {
        if (!nodes.has(device.node)) nodes.set(device.node, { name: device.node, remote: device.remote, devices: [], busy: 0 });
        const node = nodes.get(device.node);
        node.devices.push(device);
        if (device.in_use_by.length) node.busy += 1;
      }
      return [...nodes.values()];
    },

    async refresh() {
      const report = await synthd.json("/v1/gpus");
      this.inventory = report.inventory;
      this.catalog = report.catalog;
    },

    async validate() {
      this.verdict = null;
      try {
        const answer = await synthd.json("/v1/gpus/validate", { method: "POST", body: {
          model: this.fit.model.trim(), gpu_preference: this.fit.gpu_preference.trim() || null, purpose: this.fit.purpose } });
        this.verdict = fitVerdict(answer);
      } catch (exc) {
        this.verdict = { tone: "bad", title: "Error.", detail: exc.message, required_gib: null, offered_gib: null };
      }
    },
  }));
});
