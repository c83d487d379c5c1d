// One fine-tuning job: the job, its events and checkpoints every 1.5 s until it ends. The loss
// curves are the `metrics` events (`data.step` with `data.train_loss`, or `data.valid_loss` when the
// job has a validation file), drawn with uPlot; a step logged twice (a resumed job) keeps its newest values.

const CHART_HEIGHT = 300;
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];

document.addEventListener("alpine:init", () => {
  Alpine.data("jobPage", () => {
    let chart = null; // the uPlot instance, kept out of Alpine's reactive proxies

    return {
      fmt: synthd.fmt,
      jobId: "",
      job: null,
      events: [],
      checkpoints: [],
      points: [],
      error: "",
      cancelling: false,

      init() {
        this.jobId = this.$el.dataset.jobId;
        this.stop = synthd.poll(() => this.refresh(), 1500, (exc) => (this.error = exc ? exc.message : ""));
        new ResizeObserver(() => chart && chart.setSize({ width: this.$refs.chart.clientWidth, height: CHART_HEIGHT }))
          .observe(this.$refs.chart);
      },

      destroy() {
        this.stop();
        if (chart) chart.destroy();
      },

      get terminal() {
        return Boolean(this.job) && synthd.TERMINAL_JOB_STATUSES.includes(this.job.status);
      },

      get steps() {
        return this.points.filter((p) => p.train_loss !== undefined);
      },

      get latest() {
        return this.steps.length ? this.steps[this.steps.length - 1] : {};
      },

      get evaluations() {
        return this.points.filter((p) => p.valid_loss !== undefined).length;
      },

      get latestValidLoss() {
        const evaluated = this.points.filter((p) => p.valid_loss !== undefined);
        return evaluated.length ? evaluated[evaluated.length - 1].valid_loss : null;
      },

      get lastStep() {
        return this.latest.step || 0;
      },

      get totalSteps() {
        return this.latest.total_steps || 0;
      },

      get duration() {
        const end = this.job.finished_at || (this.terminal ? null : Date.now() / 1000);
        return end ? synthd.fmt.duration(end - this.job.created_at) : "—";
      },

      get playgroundLink() {
        if (!this.job || !this.job.fine_tuned_model) return "";
        const query = new URLSearchParams({ model: this.job.fine_tuned_model, compare: this.job.model });
        return `${synthd.root}/playground?${query}`;
      },

      async refresh() {
        const base = `/v1/fine_tuning/jobs/${encodeURIComponent(this.jobId)}`;
        const wasTerminal = this.terminal;
        const job = await synthd.json(base);
        const newEvents = await synthd.newerItems(`${base}/events`, new Set(this.events.map((e) => e.id)));
        const newCheckpoints = await synthd.newerItems(`${base}/checkpoints`, new Set(this.checkpoints.map((c) => c.id)));
        this.job = job;
        if (newCheckpoints.length) this.checkpoints = [...newCheckpoints, ...this.checkpoints];
        if (newEvents.length) {
          this.events = [...newEvents, ...this.events];
          this.points = this.metricPoints();
          this.draw();
        }
        if (wasTerminal) this.stop();
      },

      // One point per step: training fields from the step's log event (it carries `total_steps`),
      // `valid_loss` from the evaluation event of that step (`valid_loss` without `train_loss`).
      // Checkpoint events repeat earlier values and are left out.
      metricPoints() {
        const byStep = new Map();
        for (const event of [...this.events].reverse()) {
          const data = event.type === "metrics" && event.data;
          if (!data || data.step === undefined) continue;
          const isStep = data.total_steps !== undefined;
          const isEvaluation = data.valid_loss !== undefined && data.train_loss === undefined;
          if (!isStep && !isEvaluation) continue;
          byStep.set(data.step, { ...byStep.get(data.step), ...data });
        }
        return [...byStep.values()].sort((a, b) => a.step - b.step);
      },

      draw() {
        if (!this.points.length) return;
        const data = [
          this.points.map((p) => p.step),
          this.points.map((p) => p.train_loss ?? null),
          this.points.map((p) => p.valid_loss ?? null),
        ];
        if (chart) {
          chart.setData(data);
          return;
        }
        chart = new uPlot({
          width: this.$refs.chart.clientWidth,
          height: CHART_HEIGHT,
          scales: { x: { time: false } },
          axes: [
            { label: "step", stroke: "#4b5563", grid: { stroke: "#eef0f3" }, incrs: STEP_INCREMENTS },
            { label: "loss", stroke: "#4b5563", grid: { stroke: "#eef0f3" }, size: 56 },
          ],
          series: [
            { label: "step", value: (_, v) => (v == null ? "—" : v) },
            { label: "train loss", stroke: "#4f46e5", width: 2, spanGaps: true, points: { show: true, size: 5, fill: "#4f46e5" },
              value: (_, v) => synthd.fmt.loss(v) },
            { label: "validation loss", stroke: "#d97706", width: 2, spanGaps: true,
              points: { show: true, size: 6, fill: "#d97706" }, value: (_, v) => synthd.fmt.loss(v) },
          ],
        }, data, this.$refs.chart);
      },

      async cancel() {
        this.cancelling = true;
        try {
          this.job = await synthd.json(`/v1/fine_tuning/jobs/${encodeURIComponent(this.jobId)}/cancel`, { method: "POST" });
        } catch (exc) {
          this.error = exc.message;
        } finally {
          this.cancelling = false;
        }
      },
    };
  });
});
