"""A deterministic Amazon-like dataset whose latent structure HMPPS should exploit.

What the generator guarantees (and ``extra`` / ``users_truth.jsonl`` record):

* **Personalization matters.** Every purchase's query is built from its
  product's category path by the same HEM rule as real data, so all products
  of a leaf category share one query. Which one a user buys is decided by the
  user's stable preferences: a favourite brand (and a second one), a colour and
  a style, plus a small per-product quality term and noise.
* **Some decisive attributes are only in the image.** For about half of the
  products the brand is absent from the text (empty brand field, not in the
  title or description); it shows only as the brand's logo mark in the
  picture, as in the paper's case study. Colour and style are always drawn,
  and in text only for some products.
* **Descriptions are noisy.** Each description mixes the useful sentences with
  shop boilerplate, CSS font settings, repeated spec lines and keyword
  stuffing. The exact noise strings are recorded per product in
  ``extra.noise`` so that summarization can be scored on how much it removes.

Images are 64x64 PNGs rendered with Pillow: the product's shape (by top-level
category) filled with its colour, a pattern for its style, and the brand's
logo mark (a coloured square with the brand's initial) in the top-left corner.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.amazon import ParseReport, RawInteraction, RawProduct
from training.artifacts import write_jsonl

TAXONOMY: dict[str, dict[str, list[str]]] = {
    "Clothing": {"Shoes": ["Running Shoes", "Hiking Boots"], "Tops": ["T-Shirts", "Hoodies"]},
    "Home": {"Kitchen": ["Coffee Mugs", "Water Bottles"], "Decor": ["Desk Lamps", "Throw Pillows"]},
    "Office": {"Supplies": ["Notebooks", "Fountain Pens"], "Bags": ["Backpacks"]},
    "Sports": {"Fitness": ["Yoga Mats"], "Outdoors": ["Camping Tents"]},
    "Electronics": {"Audio": ["Headphones"], "Accessories": ["Phone Cases"]},
}
BRANDS = {  # name -> logo colour
    "Acme": (220, 20, 60), "Borealis": (0, 128, 128), "Cobalt": (0, 71, 171), "Dune": (194, 154, 108),
    "Ember": (255, 99, 0), "Fjord": (70, 130, 180), "Granite": (90, 90, 90), "Halcyon": (148, 0, 211),
    "Ion": (0, 200, 83), "Juniper": (85, 107, 47),
}
COLOURS = {
    "red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 150, 60), "yellow": (235, 200, 20),
    "black": (25, 25, 25), "white": (245, 245, 245), "purple": (120, 40, 160), "orange": (240, 130, 20),
}
STYLES = ("classic", "sporty", "minimal", "vintage")
MATERIALS = ("cotton", "polyester", "steel", "ceramic", "leather", "recycled plastic", "bamboo", "aluminium")
BOILERPLATE = (
    "Free shipping on orders over $25.", "30-day hassle-free returns.", "Satisfaction guaranteed or your money back!",
    "Please allow 2-3 business days for processing.", "Colors may vary slightly due to monitor settings.",
    "Visit our store for more great products.", "Customer service available 24/7.",
)
FONT_SETTINGS = (
    "font-family: Arial, sans-serif; font-size: 12pt; color: #333333;",
    "font-family: 'Times New Roman'; font-weight: bold; font-size: 14px;",
    "span style=font-size:10pt line-height:1.5",
)


@dataclass
class SyntheticConfig:
    users: int = 400
    products: int = 300
    seed: int = 0
    min_core: int = 5
    purchases_min: int = 6
    purchases_max: int = 16
    brand_in_text_rate: float = 0.5
    colour_in_text_rate: float = 0.6
    style_in_text_rate: float = 0.6
    # utility weights of the purchase choice model
    w_brand: float = 2.5
    w_brand2: float = 1.2
    w_colour: float = 1.5
    w_style: float = 1.0
    w_quality: float = 0.5
    noise: float = 0.6
    # consultations (MAPS): the share of purchases preceded by a chat that voices the buyer's motivation,
    # and the chance that each voiced preference is a random one instead of the true one
    consultation_rate: float = 0.5
    consultation_noise: float = 0.2


def _leaves() -> list[tuple[str, str, str]]:
    return [(top, mid, leaf) for top, mids in TAXONOMY.items() for mid, leaves in mids.items() for leaf in leaves]


def _singular(leaf: str) -> str:
    word = leaf.rsplit(" ", 1)
    last = word[-1][:-1] if word[-1].endswith("s") else word[-1]
    return (word[0] + " " + last) if len(word) == 2 else last


def _description(rng: random.Random, p: dict[str, Any]) -> tuple[str, list[str]]:
    useful = [f"This {_singular(p['leaf']).lower()} is made of {p['material']}."]
    if p["colour_in_text"]:
        useful.append(f"Colour: {p['colour']}.")
    if p["style_in_text"]:
        useful.append(f"A {p['style']} design for everyday use.")
    if p["brand_in_text"]:
        useful.append(f"Designed by {p['brand']}.")
    useful.append(f"Weight: {p['weight']} g.")
    noise = [rng.choice(FONT_SETTINGS)]
    noise += rng.sample(BOILERPLATE, k=rng.randint(2, 3))
    noise.append(f"Material: {p['material']}. Material: {p['material']}. Weight: {p['weight']} g.")
    kw = p["leaf"].lower()
    noise.append(f"best {kw} cheap {kw} {kw} for sale top rated {kw}")
    parts = useful + noise
    rng.shuffle(parts)
    return " ".join(parts), noise


def render_image(path: Path, p: dict[str, Any]) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (236, 236, 236))
    d = ImageDraw.Draw(img)
    fill = COLOURS[p["colour"]]
    box = (14, 16, 58, 58)
    top = p["top"]
    if top == "Clothing":
        d.rectangle(box, fill=fill)
    elif top == "Home":
        d.ellipse(box, fill=fill)
    elif top == "Office":
        d.polygon([(36, 14), (60, 58), (12, 58)], fill=fill)
    elif top == "Sports":
        d.rounded_rectangle(box, radius=10, fill=fill)
    else:
        d.polygon([(36, 14), (60, 36), (36, 60), (12, 36)], fill=fill)
    ink = (255, 255, 255) if sum(fill) < 400 else (20, 20, 20)
    if p["style"] == "sporty":
        for x in range(0, 80, 10):
            d.line([(x, 58), (x - 24, 16)], fill=ink, width=2)
    elif p["style"] == "vintage":
        for x in range(20, 58, 9):
            for y in range(22, 58, 9):
                d.ellipse((x, y, x + 3, y + 3), fill=ink)
    elif p["style"] == "minimal":
        d.rectangle((2, 2, 61, 61), outline=(60, 60, 60), width=2)
    # brand logo mark: a coloured square with the brand's initial, always top-left
    d.rectangle((0, 0, 15, 15), fill=BRANDS[p["brand"]])
    d.text((4, 2), p["brand"][0], fill=(255, 255, 255))
    img.save(path, format="PNG", optimize=True)


def _make_products(rng: random.Random, cfg: SyntheticConfig) -> list[dict[str, Any]]:
    leaves = _leaves()
    brands = sorted(BRANDS)
    products = []
    for i in range(cfg.products):
        top, mid, leaf = leaves[i % len(leaves)]  # balanced leaves
        p = {
            "product_id": f"SP{i:05d}",
            "top": top, "mid": mid, "leaf": leaf,
            "brand": rng.choice(brands),
            "colour": rng.choice(sorted(COLOURS)),
            "style": rng.choice(STYLES),
            "material": rng.choice(MATERIALS),
            "weight": rng.randrange(100, 2000, 10),
            "quality": rng.gauss(0.0, 1.0),
            "brand_in_text": rng.random() < cfg.brand_in_text_rate,
            "colour_in_text": rng.random() < cfg.colour_in_text_rate,
            "style_in_text": rng.random() < cfg.style_in_text_rate,
        }
        words = [p["brand"]] if p["brand_in_text"] else []
        if p["style_in_text"]:
            words.append(p["style"].capitalize())
        if p["colour_in_text"]:
            words.append(p["colour"].capitalize())
        words += [_singular(leaf), f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.randint(100, 999)}"]
        p["title"] = " ".join(words)
        p["description"], p["noise"] = _description(rng, p)
        products.append(p)
    return products


def _make_users(rng: random.Random, cfg: SyntheticConfig) -> list[dict[str, Any]]:
    leaves = _leaves()
    brands = sorted(BRANDS)
    users = []
    for u in range(cfg.users):
        fav, fav2 = rng.sample(brands, 2)
        users.append({
            "user_id": f"SU{u:05d}",
            "brand": fav, "brand2": fav2,
            "colour": rng.choice(sorted(COLOURS)),
            "style": rng.choice(STYLES),
            "interests": [" > ".join(x) for x in rng.sample(leaves, k=rng.randint(3, 5))],
        })
    return users


def _purchases(rng: random.Random, cfg: SyntheticConfig, users: list[dict[str, Any]],
               products: list[dict[str, Any]]) -> list[RawInteraction]:
    """Each purchase: the product of one of the user's interest leaves, not bought before, with the highest
    utility under the latent choice model: preference matches + product quality + Gumbel noise.

    A leaf's utilities are computed as arrays (a large shop's leaves hold hundreds of products, and scoring
    them one Python call at a time made generation quadratic in the shop), with the same float arithmetic
    as product by product (term by term, left to right) and one draw of the seeded stream per candidate,
    in the same order: a shop is the same, purchase for purchase, as when it was scored one by one."""
    by_leaf: dict[str, list[dict[str, Any]]] = {}
    for p in products:
        by_leaf.setdefault(" > ".join((p["top"], p["mid"], p["leaf"])), []).append(p)
    arrays = {leaf: {"ids": [p["product_id"] for p in ps],
                     **{k: np.array([p[k] for p in ps]) for k in ("brand", "colour", "style", "quality")}}
              for leaf, ps in by_leaf.items()}
    log = math.log
    out = []
    for user in users:
        t = 1_400_000_000 + rng.randrange(0, 30 * 86400)
        bought: set[str] = set()
        for _ in range(rng.randint(cfg.purchases_min, cfg.purchases_max)):
            leaf = rng.choice(user["interests"])
            a = arrays.get(leaf)
            if a is None:
                continue
            keep = np.array([pid not in bought for pid in a["ids"]]) if bought else np.ones(len(a["ids"]), bool)
            n = int(keep.sum())
            if not n:
                continue
            gumbel = np.array([-log(-log(rng.random() + 1e-12) + 1e-12) for _ in range(n)])
            utility = (cfg.w_brand * (a["brand"][keep] == user["brand"])
                       + cfg.w_brand2 * (a["brand"][keep] == user["brand2"])
                       + cfg.w_colour * (a["colour"][keep] == user["colour"])
                       + cfg.w_style * (a["style"][keep] == user["style"])
                       + cfg.w_quality * a["quality"][keep] + cfg.noise * gumbel)
            choice = a["ids"][int(np.flatnonzero(keep)[int(np.argmax(utility))])]
            bought.add(choice)
            t += rng.randrange(86400, 20 * 86400)
            out.append(RawInteraction(user["user_id"], choice, t))
    return out


CONTEXTS = ("for my new flat", "as a gift for my sister", "for daily commuting", "for a weekend trip",
            "to replace an old one", "for the office", "for a friend's birthday", "for the gym")


def _consultations(cfg: SyntheticConfig, users: list[dict[str, Any]], products: list[dict[str, Any]],
                   interactions: list[RawInteraction]) -> list[dict[str, Any]]:
    """Chats a user has shortly before some purchases, voicing the latent motivation (MAPS Sec. 3).

    Their own random stream, so turning them off or on leaves products and purchases unchanged.
    Each names the need (the product type) and, each with probability 0.6, the brand, colour and style
    the user prefers; ``consultation_noise`` of those mentions are random values instead.
    """
    rng = random.Random(cfg.seed * 7919 + 17)
    by_user = {u["user_id"]: u for u in users}
    by_id = {p["product_id"]: p for p in products}
    brands, colours = sorted(BRANDS), sorted(COLOURS)
    out = []
    for r in interactions:
        if rng.random() >= cfg.consultation_rate:
            continue
        u, p = by_user[r.user_id], by_id[r.product_id]

        def voiced(true: str, pool: list[str] | tuple[str, ...]) -> str:
            return rng.choice(list(pool)) if rng.random() < cfg.consultation_noise else true

        parts = [f"Hi, I am looking for a {_singular(p['leaf']).lower()} {rng.choice(CONTEXTS)}."]
        if rng.random() < 0.6:
            parts.append(f"I have had good experiences with {voiced(u['brand'], brands)}.")
        if rng.random() < 0.6:
            parts.append(f"I prefer {voiced(u['colour'], colours)} things.")
        if rng.random() < 0.6:
            parts.append(f"Something with a {voiced(u['style'], STYLES)} look would be nice.")
        reply = f"Sure, here are some {p['leaf'].lower()} that fit what you describe."
        out.append({"user_id": r.user_id, "timestamp": r.timestamp - rng.randrange(600, 86400),
                    "text": " ".join(parts), "reply": reply})
    return out


def _world(cfg: SyntheticConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[RawInteraction]]:
    """Products, users (with their true preferences) and purchases, all from one seeded stream."""
    rng = random.Random(cfg.seed)
    products = _make_products(rng, cfg)
    users = _make_users(rng, cfg)
    return products, users, _purchases(rng, cfg, users, products)


def _meta(p: dict[str, Any]) -> RawProduct:
    return RawProduct(
        product_id=p["product_id"],
        title=p["title"],
        brand=p["brand"] if p["brand_in_text"] else "",
        categories=[[p["top"], p["mid"], p["leaf"]]],
        main_category=p["top"],
        description=p["description"],
        image=f"images/{p['product_id']}.png",
        extra={
            "truth": {k: p[k] for k in ("brand", "colour", "style", "material", "brand_in_text",
                                        "colour_in_text", "style_in_text")},
            "noise": p["noise"],
        },
    )


def generate(cfg: SyntheticConfig, out: str | Path) -> dict[str, Any]:
    """Generate raw records and images, then build the dataset like real data."""
    from tqdm import tqdm

    from training.prepare import build_dataset

    products, users, interactions = _world(cfg)
    meta = {}
    with tempfile.TemporaryDirectory(prefix="hmpps-synth-") as stage:
        (Path(stage) / "images").mkdir()
        for p in tqdm(products, desc="rendering images", unit="img", leave=False):
            render_image(Path(stage) / "images" / f"{p['product_id']}.png", p)
            meta[p["product_id"]] = _meta(p)
        write_jsonl(Path(stage) / "users_truth.jsonl", users)
        write_jsonl(Path(stage) / "consultations.jsonl", _consultations(cfg, users, products, interactions))
        report = ParseReport("synthetic", "synthetic", lines=len(interactions), valid=len(interactions))
        return build_dataset(
            interactions, meta, out, name=f"synthetic-s{cfg.seed}", min_core=cfg.min_core,
            parse_reports=[report], params={"synthetic": asdict(cfg)},
            image_sources={m.image: Path(stage) / m.image for m in meta.values() if m.image},
            side_files={f: Path(stage) / f for f in ("users_truth.jsonl", "consultations.jsonl")},
        )


def _search_text(rng: random.Random, p: dict[str, Any]) -> str:
    """What a shopper might have typed before buying ``p``: its leaf category, often with one of its attributes."""
    leaf = p["leaf"].lower()
    r = rng.random()
    if r < 0.3:
        return f"{p['colour']} {leaf}".lower()
    if r < 0.5:
        return f"{p['style']} {leaf}".lower()
    if r < 0.65:
        return f"{p['brand']} {leaf}".lower()
    if r < 0.8:
        return f"{p['mid']} {leaf}".lower()
    return leaf


def export_events(cfg: SyntheticConfig, out: str | Path, queries: str = "search") -> dict[str, int]:
    """The same world in the own-data schema (``hmpps-owndata/1``): products.jsonl.gz, events.jsonl.gz,
    images/ and the ground-truth side files. ``queries``: ``search`` gives each purchase the text its
    buyer searched; ``category`` leaves the query out, so ``hmpps data events`` applies the category rule."""
    import gzip

    from tqdm import tqdm

    from training.artifacts import atomic_dir

    if queries not in ("search", "category"):
        raise ValueError(f"queries must be 'search' or 'category', got {queries!r}")
    products, users, interactions = _world(cfg)
    by_id = {p["product_id"]: p for p in products}
    qrng = random.Random(cfg.seed + 7919)  # its own stream: the world is the same either way
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        with gzip.open(tmp / "products.jsonl.gz", "wt", encoding="utf-8") as f:
            for p in tqdm(products, desc="rendering images", unit="img", leave=False):
                render_image(tmp / "images" / f"{p['product_id']}.png", p)
                m = _meta(p)
                row = {"product_id": m.product_id, "title": m.title, "brand": m.brand or None,
                       "category": m.categories[0], "description": m.description, "image": m.image,
                       "attributes": m.extra}
                f.write(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False) + "\n")
        seq: dict[str, int] = {}
        with gzip.open(tmp / "events.jsonl.gz", "wt", encoding="utf-8") as f:
            for r in interactions:
                seq[r.user_id] = seq.get(r.user_id, 0) + 1
                event = {"event_id": f"{r.user_id}-{seq[r.user_id]}", "user_id": r.user_id,
                         "product_id": r.product_id, "type": "purchase", "timestamp": r.timestamp}
                if queries == "search":
                    event["query"] = _search_text(qrng, by_id[r.product_id])
                f.write(json.dumps(event) + "\n")
        write_jsonl(tmp / "users_truth.jsonl", users)
        write_jsonl(tmp / "consultations.jsonl", _consultations(cfg, users, products, interactions))
    return {"products": len(products), "events": len(interactions), "users": len(users)}
