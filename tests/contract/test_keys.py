"""The Redis key schema: every key of a version under its namespace, queries keyed by their normal form."""

from __future__ import annotations

from contract import keys


def test_query_keys_ignore_case_and_spacing_but_not_words():
    assert keys.normalize_query("  Red   RUNNING\tshoes ") == "red running shoes"
    assert keys.query("v1", "Red running shoes") == keys.query("v1", "red  running shoes ")
    assert keys.query("v1", "red running shoes") != keys.query("v1", "red running shoe")
    assert len(keys.query_key("any text at all, of any length " * 50)) == 20


def test_model_data_is_namespaced_by_version_and_user_data_is_not_mixed_up_with_it():
    version = "magazine-0123456789ab"
    made = [keys.manifest(version), keys.complete(version), keys.product(version, "P1"), keys.summary(version, "P1"),
            keys.query(version, "q"), keys.tail_query(version, "q")]
    assert all(k.startswith(f"hmpps:v:{version}:") for k in made)
    assert len(set(made)) == len(made), "each kind of key has its own prefix"
    assert keys.product("a", "P1") != keys.product("b", "P1")
    assert keys.tail_query(version, "q") != keys.query(version, "q")
    for k in (keys.ALIAS, keys.FEEDBACK_STREAM, keys.EVENTS_STREAM, keys.user_history("U1"), keys.event_seen("e1")):
        assert k.startswith("hmpps:") and ":v:" not in k  # user data outlives every version


def test_key_layout_is_the_documented_one():
    # the layout is the contract with running services and published data: a change here is a migration
    assert keys.product("V", "P") == "hmpps:v:V:p:{P}"
    assert keys.summary("V", "P") == "hmpps:v:V:s:{P}" and keys.product_meta("V", "P") == "hmpps:v:V:ph:{P}"
    assert keys.LAYOUT == 2
    assert keys.user_history("U") == "hmpps:h:U" and keys.event_seen("E") == "hmpps:ev:E"


def test_history_members_carry_the_event_and_the_product():
    m = keys.history_member("evt-1", "P|with:odd\tchars")
    assert keys.history_product(m) == "P|with:odd\tchars" and keys.history_product(m.encode()) == "P|with:odd\tchars"
    assert keys.ALIAS == "hmpps:live" and keys.FEEDBACK_STREAM == "hmpps:feedback"


def _slot_tag(key: str) -> str:
    # Redis Cluster hashes only the part between the first "{" and the next "}" when it is not empty
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1:end] if start >= 0 and end > start + 1 else key


def test_a_products_keys_share_a_slot_and_products_spread():
    for pid in ("P1", "odd}id", "with{brace"):
        tags = {_slot_tag(f(v, pid)) for f in (keys.product, keys.summary, keys.product_meta) for v in ("V",)}
        assert len(tags) == 1
    assert _slot_tag(keys.product("V", "P1")) != _slot_tag(keys.product("V", "P2"))
    pre, suf = keys.split_key(keys.product("V", ""))
    assert pre + "P9" + suf == keys.product("V", "P9")


def test_as_text_reads_replies_of_either_client_mode():
    # redis-py returns bytes unless decode_responses is on; a missing key is None and stays None
    assert keys.as_text(b"hmpps-v1") == "hmpps-v1"
    assert keys.as_text("hmpps-v1") == "hmpps-v1"
    assert keys.as_text(None) is None
    assert keys.history_product(b"e1\x1fP-9") == keys.history_product("e1\x1fP-9") == "P-9"
