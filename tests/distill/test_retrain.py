"""Retraining from clicks: the loss and the history the service saw, on crafted inputs."""

from __future__ import annotations

import pytest
import torch

from contract.errors import InputError
from distill.retrain import RetrainConfig, click_loss, history_at


def test_click_loss_ignores_unobserved_items_and_weights_clicks():
    valid = torch.tensor([[True, True, True]])
    labels = torch.tensor([0, 1, -1])
    logits = torch.zeros(3, 2)
    w1 = click_loss(logits, labels, torch.tensor([1.0, 1.0, 0.0]), valid, 1.0)
    # an unobserved item's score changes nothing
    moved = logits.detach().clone()
    moved[2] = torch.tensor([5.0, -5.0])
    assert float(click_loss(moved, labels, torch.tensor([1.0, 1.0, 0.0]), valid, 1.0)) == pytest.approx(float(w1))
    # raising the clicked item's yes-margin lowers the loss; raising the skipped one's raises it
    up = logits.detach().clone()
    up[1] = torch.tensor([1.0, -1.0])
    assert float(click_loss(up, labels, torch.tensor([1.0, 1.0, 0.0]), valid, 1.0)) < float(w1)
    down = logits.detach().clone()
    down[0] = torch.tensor([1.0, -1.0])
    assert float(click_loss(down, labels, torch.tensor([1.0, 1.0, 0.0]), valid, 1.0)) > float(w1)
    # a heavier (propensity-weighted) click counts more in the pointwise term
    heavy = click_loss(up, labels, torch.tensor([1.0, 4.0, 0.0]), valid, 0.0)
    light = click_loss(up, labels, torch.tensor([1.0, 1.0, 0.0]), valid, 0.0)
    assert float(heavy) < float(light)


class _Tables:
    history_cap = 3
    seeded = {"u": ["s3", "s2", "s1"]}  # newest first

    def has(self, pid):
        return pid != "gone"


def test_history_at_merges_logged_events_before_the_request_with_the_seeded_history():
    live = {"u": [[10.0, "e1"], [20.0, "gone"], [30.0, "e3"], [50.0, "later"]]}
    # newest first: e3, gone, e1, s3 ... -> capped to 3 -> "gone" has no features -> oldest first
    assert history_at(_Tables(), "u", 40.0, live) == ["e1", "e3"]
    assert history_at(_Tables(), "u", 5.0, live) == ["s1", "s2", "s3"]
    assert history_at(_Tables(), "nobody", 5.0, live) == []


def test_retrain_config_names_bad_values():
    with pytest.raises(InputError, match="correction"):
        RetrainConfig(correction="magic")
    with pytest.raises(InputError, match="ipw_clip"):
        RetrainConfig(ipw_clip=0.5)


def test_the_ipw_loss_reads_only_clicks_over_the_whole_list():
    valid = torch.tensor([[True, True, True]])
    labels = torch.tensor([0, 1, -1])
    w = torch.tensor([1.0, 2.0, 0.0])
    base = click_loss(torch.zeros(3, 2), labels, w, valid, 1.0, whole_list=True)
    assert float(base) == pytest.approx(float(torch.log(torch.tensor(3.0))))  # uniform over all three shown
    # the unobserved item is in the softmax: raising it raises the loss
    up = torch.zeros(3, 2)
    up[2] = torch.tensor([1.0, -1.0])
    assert float(click_loss(up, labels, w, valid, 1.0, whole_list=True)) > float(base)
    # the skipped item is no negative of its own: the loss is the same whether it is labelled 0 or unobserved
    assert float(click_loss(up, torch.tensor([-1, 1, -1]), w, valid, 1.0, whole_list=True)) == pytest.approx(
        float(click_loss(up, labels, w, valid, 1.0, whole_list=True)))
