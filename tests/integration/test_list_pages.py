"""``GET /v1/files`` pages like OpenAI's: ``limit`` and ``after`` walk the newest-first list without a
duplicate or a gap, and the SDK's own auto-pagination gets the same list."""

import openai


def test_files_page_through_the_api(client: openai.OpenAI) -> None:
    uploaded = {
        client.files.create(file=(f"page-{i}.jsonl", b'{"n": %d}\n' % i), purpose="user_data").id for i in range(5)
    }
    everything = client.files.list(purpose="user_data")
    assert not everything.has_more and uploaded <= {f.id for f in everything.data}
    newest_first = [f.id for f in everything.data]
    assert newest_first == [f.id for f in sorted(everything.data, key=lambda f: (f.created_at, f.id), reverse=True)]

    walked, after = [], {}
    while True:
        page = client.files.list(purpose="user_data", limit=2, **after)
        walked += [f.id for f in page.data]
        if not page.has_more:
            break
        assert len(page.data) == 2
        after = {"after": page.data[-1].id}
    assert walked == newest_first
    assert [f.id for f in client.files.list(purpose="user_data", limit=2)] == newest_first
    assert client.files.list(purpose="user_data", limit=2, after="file-unknown").data == []
