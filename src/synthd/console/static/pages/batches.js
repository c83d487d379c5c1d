// Batches: the list (GET /v1/batches every 2 s) with each batch's progress and result files, and
// cancel (POST /v1/batches/{id}/cancel) for a batch still validating or in progress.

document.addEventListener("alpine:init", () => {
  Alpine.data("batchesPage", () => ({
    fmt: synthd.fmt,
    batches: [],
    loaded: false,
    error: "",

    init() {
      this.stop = synthd.poll(() => this.refresh(), 2000, (exc) => (this.error = exc ? exc.message : ""));
    },

    destroy() {
      this.stop();
    },

    async refresh() {
      const page = await synthd.json("/v1/batches?limit=100");
      this.batches = page.data;
      this.loaded = true;
    },

    progress(batch) {
      const counts = batch.request_counts;
      return `${counts.completed + counts.failed} / ${counts.total}`;
    },

    firstError(batch) {
      const first = batch.errors && batch.errors.data[0];
      return first ? `line ${first.line}: ${first.message}` : "";
    },

    cancellable(batch) {
      return ["validating", "in_progress"].includes(batch.status);
    },

    async cancel(batch) {
      try {
        await synthd.json(`/v1/batches/${encodeURIComponent(batch.id)}/cancel`, { method: "POST" });
        await this.refresh();
      } catch (exc) {
        this.error = exc.message;
      }
    },
  }));
});
