"""The generator's promises: deterministic, personal, image-only brands, noisy text."""

import json
from collections import Counter

from PIL import Image

from training.dataset import load_dataset
from training.synthetic import SyntheticConfig, generate


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    a = generate(SyntheticConfig(users=40, products=40, seed=3, min_core=2), tmp_path / "a")
    b = generate(SyntheticConfig(users=40, products=40, seed=3, min_core=2), tmp_path / "b")
    c = generate(SyntheticConfig(users=40, products=40, seed=4, min_core=2), tmp_path / "c")
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert (tmp_path / "a" / "images").is_dir()


def test_images_are_real_pngs_with_the_brand_logo(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    for pid, p in list(ds.products.items())[:10]:
        img = Image.open(ds.image_path(pid))
        assert img.size == (64, 64)
        from training.synthetic import BRANDS

        assert img.getpixel((1, 14)) == BRANDS[p["extra"]["truth"]["brand"]]


def test_some_brands_are_only_in_the_image(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    hidden = [p for p in ds.products.values() if not p["extra"]["truth"]["brand_in_text"]]
    assert 0.3 < len(hidden) / len(ds.products) < 0.7
    for p in hidden:
        brand = p["extra"]["truth"]["brand"]
        assert p["brand"] == "" and brand not in p["title"] and brand not in p["description"]


def test_descriptions_carry_recorded_noise(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    for p in ds.products.values():
        assert p["extra"]["noise"], "every product records its injected noise"
        assert all(n in p["description"] for n in p["extra"]["noise"])
        assert any("font" in n for n in p["extra"]["noise"])


def test_personalization_decides_between_products_of_one_query(synthetic_dir, tmp_path):
    from training.synthetic import SyntheticConfig, generate

    direct = tmp_path / "direct"  # the category rule: one query per category path
    generate(SyntheticConfig(users=160, products=120, seed=7), direct)
    ds = load_dataset(direct)
    users = {u["user_id"]: u for u in map(json.loads, (direct / "users_truth.jsonl").read_text().splitlines())}
    by_query = Counter(r["query"] for r in ds.interactions)
    assert len(by_query) <= 20, "queries are category paths shared by many products"
    searched = Counter(r["query"] for r in load_dataset(synthetic_dir).interactions)
    assert len(searched) > 5 * len(by_query), "the searched texts of the events schema are many and distinct"
    brand = {pid: p["extra"]["truth"]["brand"] for pid, p in ds.products.items()}
    by_leaf = {}
    for pid, p in ds.products.items():
        by_leaf.setdefault(tuple(p["category"]), []).append(pid)
    match = chance = 0.0
    for r in ds.interactions:
        fav = users[r["user_id"]]["brand"]
        pool = by_leaf[tuple(ds.products[r["product_id"]]["category"])]
        match += brand[r["product_id"]] == fav
        chance += sum(brand[p] == fav for p in pool) / len(pool)  # a brand-indifferent user
    assert match > 2 * chance, (match, chance)
