"""The console in a real browser: Playwright's Python API driving Debian's Chromium against a real
``synthd serve`` (with an API key and a declared GPU pool), plus the console's file-check route over
HTTP. Screenshots of each page go to ``test-artifacts/console/``."""

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from synthd.demo_data import DEMO_DATA
from synthd.server_process import ServerProcess
from tests.support.server import MODEL, server_env

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google services, which floods a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
API_KEY = "sk-console-test"
POOL = {
    "devices": [{"type": "H100", "count": 2, "node": "gpu-node-1"}, {"type": "L4", "count": 1, "node": "gpu-node-2"}]
}
TERMINAL = ("succeeded", "failed", "cancelled")
STREAM_TIMEOUT_MS = 240_000  # generous: the CPUs may be shared with other work


@pytest.fixture(scope="module")
def console_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("console-home")
    pool = home / "pool.json"
    pool.write_text(json.dumps(POOL))
    env = server_env(home, models_dir, SYNTHD_API_KEY=API_KEY, SYNTHD_GPU_POOL_FILE=str(pool))
    with ServerProcess(log_path=home / "server.log", env=env) as process:
        yield process


@pytest.fixture(scope="module")
def sdk(console_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=console_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (make setup tries)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Playwright gives every launch a fresh temporary --user-data-dir.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser: Browser, server: ServerProcess, api_key: str | None) -> Page:
    context = browser.new_context(base_url=server.root_url, viewport={"width": 1360, "height": 860})
    if api_key:
        context.add_init_script(f"localStorage.setItem('synthd.apiKey', {json.dumps(api_key)})")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page


@pytest.fixture
def page(browser: Browser, console_server: ServerProcess) -> Iterator[Page]:
    page = new_page(browser, console_server, API_KEY)
    yield page
    assert page.errors == [], page.errors
    page.context.close()


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def bad_sft_file() -> bytes:
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})
    no_answer = json.dumps({"messages": [{"role": "user", "content": "Hi"}]})
    return f"{good}\n{{not json\n{no_answer}\n".encode()


def heldout_sft_file() -> bytes:
    """``sft_facts_heldout.jsonl`` (question, answer) as chat rows."""
    rows = [json.loads(line) for line in (DEMO_DATA / "sft_facts_heldout.jsonl").read_text().splitlines()]
    return "".join(
        json.dumps(
            {"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]}
        )
        + "\n"
        for r in rows
    ).encode()


def test_console_asks_for_the_api_key(browser: Browser, console_server: ServerProcess) -> None:
    page = new_page(browser, console_server, api_key=None)
    page.goto("/")
    expect(page).to_have_url(f"{console_server.root_url}/models")
    dialog = page.get_by_test_id("key-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("You didn't provide an API key.")
    screenshot(page, "api-key")

    page.fill("input[name=api_key]", "sk-wrong")
    page.click("text=Use this key")
    expect(dialog).to_contain_text("The stored key was rejected.")
    page.fill("input[name=api_key]", API_KEY)
    page.click("text=Use this key")
    expect(dialog).to_be_hidden()
    row = page.locator(f"tr[data-model='{MODEL}']")
    expect(row).to_contain_text("warmed")
    expect(row).to_contain_text("cpu")
    assert page.evaluate("localStorage.getItem('synthd.apiKey')") == API_KEY
    assert page.errors == []
    page.context.close()


def test_warm_up_from_the_models_page(page: Page) -> None:
    page.goto("/models")
    page.fill("input[name=model]", MODEL)
    page.fill("input[name=gpu_preference]", "cpu")
    page.click("form >> text=Warm up")
    expect(page.get_by_test_id("warm-notice")).to_have_text(f"{MODEL}: already warmed on cpu")
    page.fill("input[name=model]", "no-such-model")
    page.click("form >> text=Warm up")
    expect(page.get_by_test_id("warm-notice")).to_contain_text("no-such-model")
    expect(page.locator("tr[data-model='no-such-model']")).to_have_count(0)


def test_models_page_shows_status_placement_and_traffic(
    page: Page, console_server: ServerProcess, sdk: openai.OpenAI
) -> None:
    sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    page.goto("/models")
    row = page.locator(f"tr[data-model='{MODEL}']")
    expect(row).to_contain_text("warmed")
    listed = httpx.get(f"{console_server.base_url}/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    entry = next(m for m in listed["data"] if m["id"] == MODEL)
    assert entry["status"] == "warmed" and entry["requests_served"] >= 1 and entry["tokens_served"] >= 1
    cells = row.locator("td")
    expect(cells.nth(1)).to_have_text(entry["status"])
    expect(cells.nth(2)).to_have_text(f"{entry['gpu']} on {entry['node']}")
    expect(cells.nth(3)).to_have_text(page.evaluate("s => synthd.fmt.duration(s)", entry["load_seconds"]))
    expect(cells.nth(4)).to_have_text(f"{entry['requests_served']:,}")
    expect(cells.nth(5)).to_have_text(f"{entry['tokens_served']:,}")


def test_validate_file_route(console_server: ServerProcess) -> None:
    url = f"{console_server.root_url}/console/validate-file"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    good = httpx.post(
        url,
        headers=auth,
        files={"file": ("a.jsonl", (DEMO_DATA / "sft_facts.jsonl").read_bytes())},
        data={"method": "supervised"},
    )
    assert good.status_code == 200
    assert good.json() == {"valid": True, "method": "supervised", "examples": 15, "problems": []}
    bad = httpx.post(url, headers=auth, files={"file": ("b.jsonl", bad_sft_file())}, data={"method": "supervised"})
    assert bad.json()["valid"] is False
    assert [p.split(":")[0] for p in bad.json()["problems"]] == ["line 2", "line 3"]
    assert "no assistant turn" in bad.json()["problems"][1]
    wrong_method = httpx.post(
        url,
        headers=auth,
        files={"file": ("c.jsonl", (DEMO_DATA / "sft_facts.jsonl").read_bytes())},
        data={"method": "dpo"},
    )
    assert wrong_method.json()["valid"] is False and wrong_method.json()["problems"][0].startswith("line 1:")
    unknown_method = httpx.post(url, headers=auth, files={"file": ("d.jsonl", b"{}")}, data={"method": "ppo"})
    assert unknown_method.status_code == 400 and unknown_method.json()["error"]["param"] == "method"
    no_key = httpx.post(url, files={"file": ("a.jsonl", b"{}")}, data={"method": "supervised"})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"


def test_invalid_training_file_shows_line_numbers(page: Page, sdk: openai.OpenAI) -> None:
    files_before = len(sdk.files.list().data)
    jobs_before = len(sdk.fine_tuning.jobs.list().data)
    page.goto("/fine-tuning")
    page.set_input_files(
        "input[name=training_file]",
        files=[{"name": "bad.jsonl", "mimeType": "application/jsonl", "buffer": bad_sft_file()}],
    )
    page.click("text=Check data and start")
    problems = page.get_by_test_id("training-problems")
    expect(problems.locator("li")).to_have_count(2)
    expect(problems.locator("li").nth(0)).to_contain_text("line 2: invalid JSON")
    expect(problems.locator("li").nth(1)).to_contain_text("line 3: 'messages' has no assistant turn")
    screenshot(page, "fine-tuning-invalid-file")
    page.set_input_files("input[name=training_file]", DEMO_DATA / "sft_facts.jsonl")
    page.fill("input[name=gpu_preference]", "H100:3")
    page.click("text=Check data and start")
    expect(page.get_by_test_id("form-error")).to_contain_text("GPU preference 'H100:3': invalid GPU count '3'")
    expect(problems).to_be_hidden()
    assert len(sdk.files.list().data) == files_before
    assert len(sdk.fine_tuning.jobs.list().data) == jobs_before


def test_gpus_page_and_will_it_fit(page: Page) -> None:
    page.goto("/gpus")
    expect(page.locator("tr[data-device='local/cpu#0']")).to_contain_text("busy")
    expect(page.locator("tr[data-device='local/cpu#0']")).to_contain_text(MODEL)
    expect(page.locator("tr[data-device='gpu-node-1/H100#1']")).to_contain_text("free")
    expect(page.locator("tr[data-device='gpu-node-2/L4#0']")).to_contain_text("24.0 GiB")
    form = page.get_by_test_id("fit-form")
    result = page.get_by_test_id("fit-result")
    expect(form.locator("input[name=model]")).to_have_value(MODEL)
    form.locator("input[name=gpu_preference]").fill("H100:2")
    form.locator("select[name=purpose]").select_option("sft")
    form.locator("button").click()
    expect(result).to_contain_text("Fits: would run on H100:2.")
    expect(result).to_contain_text("of 160.0 GiB offered")
    screenshot(page, "gpus")
    form.locator("input[name=gpu_preference]").fill("H100:3")
    form.locator("button").click()
    expect(result).to_contain_text("Invalid preference.")
    expect(result).to_contain_text("invalid GPU count '3'")


def stream_in_playground(page: Page, prompt: str, panels: int) -> list[list[str]]:
    """Send ``prompt``; returns, per panel, every text the streaming answer showed, in order."""
    page.evaluate(
        """panels => {
        window.__seen = [...Array(panels).keys()].map(() => []);
        for (let i = 0; i < panels; i++) {
            const answer = document.querySelector(`[data-testid=answer-${i}] span`);
            new MutationObserver(() => window.__seen[i].push(answer.textContent))
                .observe(answer, {childList: true, characterData: true, subtree: true});
        }
    }""",
        panels,
    )
    page.fill("textarea[name=prompt]", prompt)
    page.click("button:has-text('Send')")
    for index in range(panels):
        expect(page.get_by_test_id(f"stats-{index}")).to_contain_text("tok/s", timeout=STREAM_TIMEOUT_MS)
    expect(page.locator("button:has-text('Send')")).to_be_visible(timeout=STREAM_TIMEOUT_MS)
    return page.evaluate("window.__seen")


def assert_streamed(seen: list[str], final: str) -> None:
    texts = [t for t in seen if t]
    assert len(set(texts)) >= 3, seen
    assert all(final.startswith(t) for t in texts), (texts, final)
    assert texts[-1] == final


def test_playground_streams_tokens(page: Page, sdk: openai.OpenAI) -> None:
    system, question = "Answer in one short sentence.", "What is the capital of France?"
    page.goto(f"/playground?model={MODEL}")
    expect(page.locator("select[name=model_a]")).to_have_value(MODEL)
    page.fill("textarea[name=system]", system)
    page.fill("input[name=temperature]", "0")
    page.fill("input[name=max_tokens]", "20")
    seen = stream_in_playground(page, question, panels=1)
    answer = page.locator("[data-testid=panel-0] .message.assistant .content").first.inner_text()
    expected = (
        sdk.chat.completions.create(
            model=MODEL,
            temperature=0,
            max_tokens=20,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )
        .choices[0]
        .message.content
    )
    assert answer == expected and "Paris" in answer
    assert_streamed(seen[0], expected)
    stats = page.get_by_test_id("stats-0").inner_text()
    assert "TTFT" in stats and "tokens" in stats


def read_points(page: Page) -> int:
    return int(page.get_by_test_id("loss-points").inner_text())


@pytest.mark.timeout(1500)  # training shares the CPUs with whatever else runs
def test_sft_job_from_the_form_draws_its_loss_curve(page: Page, sdk: openai.OpenAI) -> None:
    training = b"".join((DEMO_DATA / "sft_facts.jsonl").read_bytes().splitlines(keepends=True)[:6])
    page.goto("/fine-tuning")
    expect(page.locator("input[name=model]")).to_have_value(MODEL)
    page.check("input[name=method][value=supervised]")
    page.fill("input[name=suffix]", "console")
    page.fill("input[name=gpu_preference]", "cpu")
    page.fill("input[name=n_epochs]", "1")
    page.fill("input[name=batch_size]", "2")
    page.fill("input[name=learning_rate_multiplier]", "5")
    page.set_input_files(
        "input[name=training_file]",
        files=[{"name": "facts.jsonl", "mimeType": "application/jsonl", "buffer": training}],
    )
    page.set_input_files(
        "input[name=validation_file]",
        files=[{"name": "heldout.jsonl", "mimeType": "application/jsonl", "buffer": heldout_sft_file()}],
    )
    page.click("text=Check data and start")
    page.wait_for_url("**/fine-tuning/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    job = sdk.fine_tuning.jobs.retrieve(job_id)
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 2
    assert job.method.type == "supervised" and job.gpu == "cpu" and job.user_provided_suffix == "console"

    counts = []
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        counts.append(read_points(page))
        if page.get_by_test_id("job-status").inner_text() in TERMINAL:
            break
        page.wait_for_timeout(200)
    expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
    steps = 3  # ceil(6 rows / batch 2)
    expect(page.get_by_test_id("loss-points")).to_have_text(str(steps))
    counts.append(read_points(page))
    assert len({c for c in counts if c > 0}) >= 2, counts  # the curve gained points while the page watched
    assert counts == sorted(counts), counts

    events = sdk.fine_tuning.jobs.list_events(job_id, limit=100).data
    train = {
        e.data["step"]: e.data["train_loss"]
        for e in events
        if e.type == "metrics" and "train_loss" in e.data and "total_steps" in e.data
    }
    valid = {
        e.data["step"]: e.data["valid_loss"]
        for e in events
        if e.type == "metrics" and "valid_loss" in e.data and "train_loss" not in e.data
    }
    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job_id).data
    assert sorted(train) == list(range(1, steps + 1))
    assert valid, events
    for checkpoint in checkpoints:
        if checkpoint.step_number in valid:  # saved right after the evaluation of its step
            assert checkpoint.metrics.valid_loss == pytest.approx(valid[checkpoint.step_number])
    expect(page.get_by_test_id("evaluations")).to_have_text(str(len(valid)))
    expect(page.locator(".latest")).to_contain_text(f"train loss {train[steps]:.4f}")
    expect(page.locator(".latest")).to_contain_text(f"validation loss {valid[max(valid)]:.4f}")
    expect(page.locator("[data-testid=loss-chart] canvas")).to_have_count(1)
    expect(page.locator(".checkpoints tr[data-checkpoint]")).to_have_count(len(checkpoints))
    model_id = sdk.fine_tuning.jobs.retrieve(job_id).fine_tuned_model
    expect(page.locator(".banner.success")).to_contain_text(model_id)
    screenshot(page, "job")

    page.click("text=Chat with it next to its base")
    expect(page.locator("select[name=model_a]")).to_have_value(model_id)
    expect(page.locator("select[name=model_b]")).to_have_value(MODEL)
    page.fill("input[name=temperature]", "0")
    page.fill("input[name=max_tokens]", "12")
    sent = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and sent.append(r.post_data_json))
    seen = stream_in_playground(page, "What is the capital of Zorbania?", panels=2)
    assert sorted(body["model"] for body in sent) == sorted([model_id, MODEL])
    assert all(body["stream"] is True and body["temperature"] == 0 and body["max_tokens"] == 12 for body in sent)
    for index in (0, 1):
        # Two requests share a batch here, so greedy answers need not equal single-request ones.
        answer = page.locator(f"[data-testid=panel-{index}] .message.assistant .content").first.inner_text()
        assert_streamed(seen[index], answer)
    screenshot(page, "playground")

    page.goto("/models")
    row = page.locator(f"tr[data-model='{model_id}']")
    expect(row).to_contain_text(f"fine-tune of {MODEL}")
    expect(row.locator("button:has-text('Delete')")).to_be_visible()
    expect(page.locator(f"tr[data-model='{MODEL}'] button:has-text('Delete')")).to_be_hidden()
    screenshot(page, "models")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button:has-text('Delete')").click()
    expect(row).to_have_count(0)
    expect(page.get_by_test_id("warm-notice")).to_have_text(f"Deleted {model_id}")
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(model_id)
    page.goto("/fine-tuning")
    expect(page.locator(f"tr[data-job='{job_id}']")).to_contain_text(model_id)
    expect(page.locator(f"tr[data-job='{job_id}']")).to_contain_text("epochs 1 · batch 2 · lr × 5")
    screenshot(page, "fine-tuning")


def test_cancel_a_job_from_its_page(page: Page, sdk: openai.OpenAI) -> None:
    training = sdk.files.create(file=("facts.jsonl", (DEMO_DATA / "sft_facts.jsonl").read_bytes()), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 1}}},
    )
    page.goto(f"/fine-tuning/{job.id}")
    expect(page.get_by_test_id("job-status")).not_to_have_text("cancelled")
    page.click("text=Cancel job")
    expect(page.get_by_test_id("job-status")).to_have_text("cancelled", timeout=120_000)
    expect(page.locator("text=Cancel job")).to_be_hidden()
    expect(page.get_by_test_id("events")).to_contain_text("cancel")
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    screenshot(page, "job-cancelled")


def test_unknown_job_page_says_so(page: Page) -> None:
    page.goto("/fine-tuning/ftjob-doesnotexist")
    expect(page.locator(".banner.error").first).to_contain_text("No fine-tuning job with id 'ftjob-doesnotexist'.")


def test_batches_page_lists_and_cancels(page: Page, sdk: openai.OpenAI) -> None:
    def upload(lines: int, max_tokens: int) -> str:
        rows = [
            json.dumps(
                {
                    "custom_id": f"c{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": MODEL,
                        "max_tokens": max_tokens,
                        "temperature": 0,
                        "messages": [{"role": "user", "content": f"Count to {i}."}],
                    },
                }
            )
            for i in range(lines)
        ]
        return sdk.files.create(file=("batch.jsonl", "\n".join(rows).encode()), purpose="batch").id

    done = sdk.batches.create(input_file_id=upload(1, 2), endpoint="/v1/chat/completions", completion_window="24h")
    long = sdk.batches.create(input_file_id=upload(200, 16), endpoint="/v1/chat/completions", completion_window="24h")
    page.goto("/batches")
    finished = page.locator(f"tr[data-batch='{done.id}']")
    expect(finished.locator(".badge")).to_have_text("completed", timeout=STREAM_TIMEOUT_MS)
    expect(finished).to_contain_text("1 / 1")
    expect(finished).to_contain_text(sdk.batches.retrieve(done.id).output_file_id)
    expect(finished.locator("text=Cancel")).to_be_hidden()
    running = page.locator(f"tr[data-batch='{long.id}']")
    expect(running.locator(".badge")).to_have_text("in progress", timeout=STREAM_TIMEOUT_MS)
    running.locator("text=Cancel").click()
    expect(running.locator(".badge")).to_have_text("cancelled", timeout=STREAM_TIMEOUT_MS)
    assert sdk.batches.retrieve(long.id).status == "cancelled"
    screenshot(page, "batches")
