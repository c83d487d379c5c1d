"""A token's raw bytes (``synthd.engine.token_bytes``): joined, they rebuild text whose characters
are split across tokens, where each token alone decodes to '�'."""

from synthd.engine.token_bytes import TokenPieces, token_bytes

TEXT = "日本 🙂 naïve"


def test_token_bytes_of_a_byte_level_vocabulary_rebuild_split_characters(tokenizer) -> None:
    pieces = TokenPieces(tokenizer)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    entries = [pieces(i) for i in ids]
    assert pieces.byte_level and any(text == "\ufffd" for text, _ in entries)
    assert bytes(b for _, raw in entries for b in raw).decode() == TEXT
    eos = tokenizer.eos_token_id
    assert pieces(eos) == (tokenizer.eos_token, tuple(tokenizer.eos_token.encode()))


def test_token_bytes_of_byte_fallback_and_other_pieces() -> None:
    assert token_bytes("<0xE6>", "\ufffd", byte_level=False) == (0xE6,)
    assert token_bytes("é", "é", byte_level=False) == (0xC3, 0xA9)  # not a byte-level spelling
    assert token_bytes("Ã©", "é", byte_level=True) == (0xC3, 0xA9)
    assert token_bytes(None, "日", byte_level=True) == tuple("日".encode())
