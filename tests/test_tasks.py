"""Task suites: layout of the default suite, domain renderings, bad names."""
import pytest
import torch

from conftest import needs_fmnist
from nmtune_lib.transfer.tasks import DOMAINS, IN_DOMAIN, default_suite, render_domain, suite_task_names, task_suite


@needs_fmnist
def test_default_suite_layout_and_no_reuse_of_the_pretraining_split():
    tasks = {t.name: t for t in default_suite(task_subset=300)}
    assert [t.kind for t in tasks.values()] == ["id"] * 3 + ["ood"] * 3
    assert tuple(tasks) == suite_task_names("default")  # the names the config checks `tasks` against
    fm = tasks["fashion_mnist"]
    assert fm.train.name.startswith("fashion_mnist/head_train") and list(fm.tests) == [IN_DOMAIN]
    train_keys = {bytes(x.numpy()) for x in fm.train.images}
    assert not train_keys & {bytes(x.numpy()) for x in fm.tests[IN_DOMAIN].images}  # disjoint halves
    real = tasks["fmnist_domains_real"]
    assert list(real.tests) == list(DOMAINS) and real.train_domain == "real"
    assert tasks["fmnist_domains_sketch"].train_domain == "sketch"
    assert set(tasks["digits_shift"].tests) == {"mnist5k", "uci_digits"}
    for task in tasks.values():
        assert len(task.train) <= 300 and 0.09 < task.chance < 0.12
        assert task.train_domain in task.tests
    # a mirrored digit is another glyph: digit tasks never flip their views, Fashion-MNIST tasks do
    assert {name: t.flip for name, t in tasks.items()} == {
        "fashion_mnist": True, "mnist5k": False, "uci_digits": False, "fmnist_domains_real": True,
        "fmnist_domains_sketch": True, "digits_shift": False}


@pytest.mark.parametrize("domain", DOMAINS)
def test_renderings_are_deterministic_shape_preserving_and_distinct(domain):
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 6:22, 8:20] = torch.randint(60, 255, (4, 1, 16, 12), generator=gen).to(torch.uint8)
    out = render_domain(images, domain)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, render_domain(images, domain))
    assert torch.equal(out, images) == (domain == "real")


def test_sketch_is_an_edge_map():
    images = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 8:20, 8:20] = 200
    sketch = render_domain(images, "sketch")[0, 0]
    assert sketch[14, 14] == 0 and sketch[0, 0] == 0  # flat inside and outside
    assert sketch[14, 8] > 100  # bright on the boundary


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="real, sketch, painting, clipart"):
        render_domain(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "quickdraw")
    with pytest.raises(ValueError, match="default"):
        task_suite("paper-14")
