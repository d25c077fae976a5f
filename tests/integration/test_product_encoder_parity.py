"""The product encoder in the bundle computes the features the offline pipeline computed (trained bundle)."""

from __future__ import annotations

import json

import numpy as np

from contract.products import record_text
from service.core.bundle import load_bundle
from training.dataset import load_dataset


def test_product_encoder_reproduces_the_offline_features(bundle_dir, synthetic_dir):
    bundle, ds = load_bundle(bundle_dir), load_dataset(synthetic_dir)
    index = json.loads((bundle_dir / "features" / "index.json").read_text())
    offline = np.load(bundle_dir / "features" / "products.npy")
    pids = index["products"][:24]
    encoded = bundle.product_encoder.encode([(record_text(ds.products[p]), ds.image_path(p)) for p in pids])
    spec = bundle.spec
    assert np.abs(encoded[:, : spec.text_dim] - offline[:24, : spec.text_dim]).max() <= 1e-4
    rest = spec.content_dim - spec.sel_dim
    assert np.abs(encoded[:, spec.text_dim: rest] - offline[:24, spec.text_dim: rest]).max() <= 1e-4  # image, has_image
    # a new product has no purchases yet: its popularity and co-purchase slices are 0
    assert encoded.shape[1] == spec.product_dim and not encoded[:, spec.content_dim:].any()
    sel = encoded[:, spec.product_sel]
    assert np.allclose(np.linalg.norm(sel, axis=1), 1.0, atol=1e-4)
