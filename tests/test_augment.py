import torch

from recog.data.augment import BatchAugment, cutout, flip, translate


def _batch(n: int = 4, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)


def test_flip_mirrors_only_masked_images() -> None:
    x = _batch()
    mask = torch.tensor([True, False, True, False])
    y = flip(x, mask)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    assert torch.equal(y[2, :, :, 0], x[2, :, :, -1])


def test_translate_shifts_content_by_the_given_pixels() -> None:
    x = _batch(n=2)
    dy, dx = torch.tensor([1, -2]), torch.tensor([0, 3])
    y = translate(x, dy, dx, pad=3)
    # image 0 moved down one row: row r of the output is row r-1 of the input
    assert torch.equal(y[0, :, 1:, :], x[0, :, :-1, :])
    # image 1 moved up two rows and right three columns
    assert torch.equal(y[1, :, :-2, 3:], x[1, :, 2:, :-3])
    assert y.shape == x.shape
    # reflected fill comes from the image itself: no values outside its range
    assert y[1].min() >= x[1].min() and y[1].max() <= x[1].max()


def test_translate_by_zero_is_identity() -> None:
    x = _batch()
    zeros = torch.zeros(4, dtype=torch.long)
    assert torch.equal(translate(x, zeros, zeros, pad=2), x)


def test_cutout_zeroes_exactly_a_square() -> None:
    x = torch.ones(2, 3, 10, 10)
    y = cutout(x, torch.tensor([5, 0]), torch.tensor([5, 0]), size=4)
    assert (y[0] == 0).sum().item() == 3 * 16
    assert (y[1] == 0).sum().item() == 3 * 4  # clipped at the corner
    assert torch.equal(y[0, :, 3:7, 3:7], torch.zeros(3, 4, 4))


def test_batch_augment_is_reproducible_from_the_generator_and_keeps_ranges() -> None:
    x = torch.rand(16, 3, 32, 32)
    aug = BatchAugment(flip=True, translate=4, cutout=8)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not BatchAugment().active
