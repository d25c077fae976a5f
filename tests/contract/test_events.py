"""The own-data schema's product rules (contract/events.py)."""

import pytest

from contract.events import parse_product


def test_untitled_product_is_named_by_its_other_text():
    p = parse_product({"product_id": "7", "title": "", "description": "A twist-barrel stylus and ballpoint pen in one, "
                       "with a retractable clip and no cap to lose"})
    assert p.title == "A twist-barrel stylus and ballpoint pen in one, with a retractable clip"
    assert parse_product({"product_id": "8", "brand": "Moshi"}).title == "Moshi"
    assert parse_product({"product_id": "9", "category": "Office > Styluses"}).title == "Styluses"


def test_product_with_no_text_at_all_is_rejected():
    with pytest.raises(ValueError, match="missing title"):
        parse_product({"product_id": "P2"})
    with pytest.raises(ValueError, match="missing title"):
        parse_product({"product_id": "P2", "title": "  ", "description": " "})
