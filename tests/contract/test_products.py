"""The product recipe both upsert paths use (the service's encoder and ``hmpps encode``)."""

from __future__ import annotations

from pathlib import Path

from contract.events import parse_product
from contract.products import content_hash, image_file, product_row


def test_product_row_resolves_the_image_and_fills_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "shoe.png").write_bytes(b"first picture")
    p = parse_product({"product_id": "P1", "title": "Trail shoe", "brand": "Fjord", "category": ["Shoes", "Trail"],
                       "description": "Light and  grippy.", "image": "shoe.png"})
    row = product_row(p, tmp_path, now=1_700_000_000.0)
    assert row.image == tmp_path / "shoe.png"
    assert row.text == "Trail shoe. Fjord. Shoes > Trail. Light and grippy."
    assert row.summary == "Light and grippy."
    assert row.updated_at == 1_700_000_000.0  # no time in the record: the upsert's
    timed = parse_product({"product_id": "P1", "title": "Trail shoe", "updated_at": 1_600_000_000})
    assert product_row(timed, tmp_path, now=1_700_000_000.0).updated_at == 1_600_000_000.0
    assert product_row(timed, tmp_path, now=0.0).summary == "Trail shoe"  # no description: the title
    assert image_file(parse_product({"product_id": "P2", "title": "t"}), tmp_path) is None


def test_content_hash_changes_with_the_text_and_the_image_bytes_only(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(b"one")
    p = parse_product({"product_id": "P1", "title": "Mug", "image": str(img)})
    first = content_hash(p, img)
    assert content_hash(p, img) == first  # a retried upsert sees the same hash
    assert content_hash(parse_product({"product_id": "P1", "title": "Mug", "updated_at": 5, "image": str(img)}),
                        img) == first  # the time is not content
    assert content_hash(parse_product({"product_id": "P1", "title": "Big mug", "image": str(img)}), img) != first
    img.write_bytes(b"two")
    assert content_hash(p, img) != first
