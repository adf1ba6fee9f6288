"""Tests of batched head tuning (nmtune_lib.transfer.batched_tuning): heads trained together equal the same heads trained one
by one with fit_head (same seed: same minibatches, views and initialisation), for every kind of head and input."""
from __future__ import annotations

import pytest
import torch

from nmtune_lib.transfer import tuning as batched_tuning
from nmtune_lib.transfer.heads import HeadStack, StackedHeads
from nmtune_lib.transfer.tuning import fit_heads
from nmtune_lib.data.datasets import load_dataset
from nmtune_lib.transfer.heads import LinearProbe, MLPHead
from nmtune_lib.transfer.tuning import fit_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# LP on two views, MLP, NMTune and NMTune variants: other learning rates and weights, a term switched off
MIXED = [dict(method="nmtune"), dict(method="lp", lr=3e-3), dict(method="mlp", lr=3e-3),
         dict(method="nmtune", w_mse=0.0, w_svd=0.01), dict(method="nmtune", w_cov=0.0, lr=1e-2),
         dict(method="nmtune", w_mse=0.0, w_cov=0.0, w_svd=0.0)]


@pytest.fixture(scope="module")
def cached():
    """Real features: uci_digits pixels 2×2-pooled (D = 16), 3 views from small seeded shifts; the test split."""
    train, test = load_dataset("uci_digits", "train"), load_dataset("uci_digits", "test")
    pool = lambda x: torch.nn.functional.avg_pool2d(x.float() / 255, 2).flatten(1)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    views = torch.stack([pool(torch.roll(train.images, int(s), dims=-1)) for s in torch.randint(-1, 2, (3,),
                                                                                                 generator=gen)], 1)
    return views[:700], train.labels[:700], pool(test.images), test.labels


def _same(a, b) -> bool:
    sa, sb = a.head.state_dict(), b.head.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("width", [49, 128, 196])  # batched products would round like a head alone at some only
def test_heads_trained_together_equal_the_heads_trained_one_by_one(cached, width):
    views, labels, test, test_labels = cached
    views, test = views[..., :width], test[:, :width]
    # 700 samples at batch 64: a short last batch of 60, whose SVD has fewer singular values
    fits = fit_heads(views, labels, MIXED, epochs=3, batch_size=64, seed=5)
    assert [f.method for f in fits] == [h["method"] for h in MIXED]
    for head, fit in zip(MIXED, fits):
        alone = fit_head(views, labels, epochs=3, batch_size=64, seed=5, **head)
        assert _same(fit, alone), head  # bitwise: same kernels, one product per head inside each batched call
        assert torch.equal(fit.logits(test), alone.logits(test))
        for row, other in zip(fit.history, alone.history):
            assert {k: row[k] for k in row if k != "seconds"} == pytest.approx(
                {k: other[k] for k in other if k != "seconds"}, nan_ok=True, rel=1e-6, abs=1e-7)
        assert fit.mode == "cached" and fit.params["batched_with"] == len(MIXED) and not fit.params["stacked"]
        assert not fit.head.training
    assert fits[0].accuracy(test, test_labels) > 0.2  # twice chance: the heads learn


def test_a_heads_numbers_do_not_depend_on_its_batch_mates(cached):
    views, labels, _, _ = cached
    for i, head in enumerate(MIXED):
        alone = fit_heads(views, labels, [head], epochs=2, seed=1)[0]
        assert _same(alone, fit_heads(views, labels, MIXED, epochs=2, seed=1)[i])


def test_eval_features_train_linear_probes_on_one_view(cached):
    views, labels, test, _ = cached
    features = views[:, 0]
    fits = fit_heads(features, labels, [dict(method="lp"), dict(method="lp", lr=1e-3)], epochs=2, seed=3)
    stacked = fit_heads(features, labels, [dict(method="lp"), dict(method="lp", lr=1e-3)], epochs=2, seed=3,
                        stacked=True)
    for fit, stacked_fit, lr in zip(fits, stacked, (1e-2, 1e-3)):
        alone = fit_head(features, labels, method="lp", lr=lr, epochs=2, seed=3)
        assert fit.mode == "eval" and _same(fit, alone)
        torch.testing.assert_close(stacked_fit.logits(features), alone.logits(features), rtol=1e-4, atol=1e-4)
    views_of_features = fit_heads(features, labels, [dict(method="nmtune"), dict(method="mlp")], epochs=2, seed=3)
    assert views_of_features[0].mode == "features"
    assert _same(views_of_features[1], fit_head(features, labels, method="mlp", epochs=2, seed=3))


def test_stacked_heads_run_every_head_on_the_same_features():
    gen = torch.Generator().manual_seed(0)
    heads = [MLPHead(6, 3, generator=gen), LinearProbe(6, 3, generator=gen), MLPHead(6, 3, generator=gen)]
    f = torch.randn(10, 6, generator=gen)
    stacked = StackedHeads(heads).eval()
    z, logits = stacked.features(f), stacked(f)
    assert z.shape == (3, 10, 6) and logits.shape == (3, 10, 3)
    for i, head in enumerate(heads):
        assert torch.equal(z[i], head.features(f)) and torch.equal(logits[i], head(f))
    assert list(stacked.parameters()) == [p for head in heads for p in head.parameters()]


def test_stacked_heads_take_one_step_as_the_heads_alone(cached):
    """One step over all 700 samples: the stacked heads' parameters and logits equal one by one's to rounding."""
    views, labels, test, _ = cached
    fits = fit_heads(views, labels, MIXED, epochs=1, batch_size=700, seed=2, stacked=True)
    for head, fit in zip(MIXED, fits):
        alone = fit_head(views, labels, epochs=1, batch_size=700, seed=2, **head)
        assert fit.method == head["method"] and fit.params["stacked"] and not fit.head.training
        for name, value in alone.head.state_dict().items():  # BatchNorm's running statistics too
            torch.testing.assert_close(fit.head.state_dict()[name], value, rtol=1e-3, atol=1e-3, msg=name)
        torch.testing.assert_close(fit.logits(test), alone.logits(test), rtol=1e-3, atol=1e-3)


def test_stacked_heads_score_as_the_heads_alone(cached):
    """Three epochs (33 steps): rounding grows, but the predictions stay those of the heads trained one by one."""
    views, labels, test, test_labels = cached
    fits = fit_heads(views, labels, MIXED, epochs=3, batch_size=64, seed=5, stacked=True)
    for head, fit in zip(MIXED, fits):
        alone = fit_head(views, labels, epochs=3, batch_size=64, seed=5, **head)
        assert (fit.predict(test) == alone.predict(test)).float().mean() >= 0.99, head
        assert fit.accuracy(test, test_labels) == pytest.approx(alone.accuracy(test, test_labels), abs=0.01)
        assert fit.history[-1]["total"] == pytest.approx(alone.history[-1]["total"], rel=1e-4)


def test_a_head_stack_runs_each_head_with_its_own_batch_statistics():
    gen = torch.Generator().manual_seed(0)
    heads = [MLPHead(6, 3, generator=gen) for _ in range(3)]
    for i, head in enumerate(heads):  # distinct BatchNorm parameters and statistics per head
        head.mlp[1].weight.data.mul_(i + 1)
        head.mlp[1].running_mean.add_(i)
    f = torch.randn(10, 6, generator=gen)
    stack = HeadStack(heads)
    assert [p.shape[0] for p in stack.parameters()] == [3] * len(stack.names)  # the stacked ones, nothing else
    for training in (True, False):
        stack.train(training)
        z, logits = stack.features(f), stack.classifier(stack.features(f))
        for i, head in enumerate(heads):
            head.train(training)
            torch.testing.assert_close(z[i], head.features(f))
            torch.testing.assert_close(logits[i], head(f))
    for i, head in enumerate(heads):  # two train-mode passes each, on the same f: the same running statistics
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(stack, name)[i], getattr(head.mlp[1], name))
    with torch.no_grad():
        stack.params[0].add_(1.0)
        stack.running_var.mul_(2.0)
    stack.eval().unstack()  # the stack's values and mode back into the heads
    for i, head in enumerate(heads):
        assert not head.training and int(head.mlp[1].num_batches_tracked) == 2
        torch.testing.assert_close(head.mlp[1].running_var, stack.running_var[i])
        torch.testing.assert_close(dict(head.named_parameters())[stack.names[0]], stack.params[0][i])
    with pytest.raises(ValueError, match="one kind and shape"):
        HeadStack([heads[0], LinearProbe(6, 3, generator=gen)])
    with pytest.raises(ValueError, match=r"n×D features all its heads share, got shape \(3, 10, 6\)"):
        stack.features(f.expand(3, 10, 6))  # one input per head is not what a stack computes


@pytest.mark.parametrize("heads, kwargs, match", [
    ([], {}, "at least one head"),
    ([dict(method="svm")], {}, "head 0.*accepted: method in lp, mlp, nmtune"),
    ([dict(method="lp", momentum=0.9)], {}, "head 0.*keys method, lr"),
    ([dict(method="lp"), dict(method="nmtune", lr=-1.0)], {}, "lr=-1.0"),
    ([dict(method="nmtune"), dict(method="nmtune", svd_top_k=3)], {}, "svd_top_k differs"),
    ([dict(method="lp"), dict(method="mlp")], {"eval": True}, "all lp or no lp"),
    ([dict(method="lp")], {"epochs": 0}, "epochs=0"),
])
def test_bad_heads_raise_before_training(cached, monkeypatch, heads, kwargs, match):
    monkeypatch.setattr(batched_tuning, "train_epochs", lambda *a, **k: pytest.fail("trained"))
    views, labels, _, _ = cached
    source = views[:, 0] if kwargs.pop("eval", False) else views
    with pytest.raises(ValueError, match=match):
        fit_heads(source, labels, heads, **kwargs)
