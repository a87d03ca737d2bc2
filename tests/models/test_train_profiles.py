import pytest

from carebench_models.errors import CarebenchModelError
from carebench_models.training import TrainConfig


def test_paper_profile_is_carebench_and_quick_profile_trains_faster():
    paper = TrainConfig.for_profile("paper")
    assert (paper.lr, paper.max_epochs, paper.patience, paper.min_epochs) == (1e-4, 50, 10, 4)
    quick = TrainConfig.for_profile("quick")
    assert (quick.lr, quick.max_epochs, quick.patience, quick.min_epochs) == (1e-3, 10, 3, 1)
    assert TrainConfig.for_profile("quick", lr=4e-4).lr == 4e-4
    with pytest.raises(CarebenchModelError, match="unknown profile"):
        TrainConfig.for_profile("fast")
