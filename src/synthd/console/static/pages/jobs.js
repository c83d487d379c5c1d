// Fine-tuning jobs: the list (GET /v1/fine_tuning/jobs every 2 s) and the new-job form. The form
// checks each file with POST /console/validate-file (the job's own JSONL rules, problems with line
// numbers) and the GPU preference with /v1/gpus/validate, then uploads the files to /v1/files and
// creates the job; on success it opens the job page.

document.addEventListener("alpine:init", () => {
  Alpine.data("jobsPage", () => ({
    fmt: synthd.fmt,
    jobs: [],
    baseModels: [],
    gpuOptions: ["auto", "cpu"],
    loaded: false,
    error: "",
    form: { method: "supervised", model: "", suffix: "", gpu: "", n_epochs: "", batch_size: "",
      learning_rate_multiplier: "", beta: "" },
    problems: { training: [], validation: [] },
    formError: "",
    submitting: false,
    step: "",

    init() {
      this.stop = synthd.poll(() => this.refresh(), 2000, (exc) => (this.error = exc ? exc.message : ""));
      synthd.json("/v1/models").then((list) => {
        this.baseModels = list.data.filter((m) => !m.parent).map((m) => m.id);
        if (!this.form.model) this.form.model = this.baseModels[0] || "";
      }).catch(() => {});
      synthd.json("/v1/gpus").then((report) => {
        this.gpuOptions = ["auto", "cpu", ...report.catalog.map((g) => g.name)];
      }).catch(() => {});
    },

    destroy() {
      this.stop();
    },

    async refresh() {
      const page = await synthd.json("/v1/fine_tuning/jobs?limit=100");
      this.jobs = page.data;
      this.loaded = true;
    },

    jobLink(job) {
      return `${synthd.root}/fine-tuning/${encodeURIComponent(job.id)}`;
    },

    hyperparameters(job) {
      return synthd.fmt.hyperparameters(job.hyperparameters || {});
    },

    duration(job) {
      const end = job.finished_at || (synthd.TERMINAL_JOB_STATUSES.includes(job.status) ? null : Date.now() / 1000);
      return end ? synthd.fmt.duration(end - job.created_at) : "—";
    },

    // The job body: blank numeric fields are left out, so the server picks ("auto").
    jobBody(trainingFile, validationFile) {
      const hyper = {};
      for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier", "beta"]) {
        if (name === "beta" && this.form.method !== "dpo") continue;
        const raw = String(this.form[name]).trim();
        if (raw) hyper[name] = ["n_epochs", "batch_size"].includes(name) ? parseInt(raw, 10) : parseFloat(raw);
      }
      return {
        model: this.form.model.trim(),
        training_file: trainingFile,
        ...(validationFile ? { validation_file: validationFile } : {}),
        ...(this.form.suffix.trim() ? { suffix: this.form.suffix.trim() } : {}),
        ...(this.form.gpu.trim() ? { gpu_preference: this.form.gpu.trim() } : {}),
        method: { type: this.form.method, [this.form.method]: { hyperparameters: hyper } },
      };
    },

    async check(kind, file) {
      const form = new FormData();
      form.append("file", file);
      form.append("method", this.form.method);
      const answer = await synthd.json("/console/validate-file", { method: "POST", form });
      this.problems[kind] = answer.problems;
      return answer.valid;
    },

    // The GPU preference as the job will see it (purpose sft or dpo), so a refusal comes before any upload.
    async checkGpu() {
      const gpu = this.form.gpu.trim();
      if (!gpu) return true;
      this.step = "Checking GPU preference…";
      const answer = await synthd.json("/v1/gpus/validate", { method: "POST", body: {
        model: this.form.model.trim(), gpu_preference: gpu, purpose: this.form.method === "dpo" ? "dpo" : "sft" } });
      if (answer.valid && answer.fits && answer.available) return true;
      this.formError = `GPU preference '${gpu}': ${answer.reason}`;
      return false;
    },

    async upload(file) {
      const form = new FormData();
      form.append("file", file);
      form.append("purpose", "fine-tune");
      return (await synthd.json("/v1/files", { method: "POST", form })).id;
    },

    async submit() {
      this.formError = "";
      this.problems = { training: [], validation: [] };
      const training = this.$refs.training.files[0];
      const validation = this.$refs.validation.files[0];
      if (!training) {
        this.formError = "Choose a training file.";
        return;
      }
      this.submitting = true;
      try {
        this.step = "Checking data…";
        const trainingOk = await this.check("training", training);
        const validationOk = validation ? await this.check("validation", validation) : true;
        if (!trainingOk || !validationOk) return;
        if (!(await this.checkGpu())) return;
        this.step = "Uploading…";
        const trainingId = await this.upload(training);
        const validationId = validation ? await this.upload(validation) : null;
        this.step = "Creating job…";
        const job = await synthd.json("/v1/fine_tuning/jobs", { method: "POST", body: this.jobBody(trainingId, validationId) });
        location.href = this.jobLink(job);
      } catch (exc) {
        this.formError = exc.error && exc.error.param ? `${exc.message} (${exc.error.param})` : exc.message;
      } finally {
        this.submitting = false;
      }
    },
  }));
});
