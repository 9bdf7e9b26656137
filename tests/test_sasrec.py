from __future__ import annotations

import pytest
import torch

from models.sasrec import SASRec


def make_model(max_len: int = 12, heads: int = 2) -> SASRec:
    torch.manual_seed(3)
    model = SASRec(num_items=50, max_len=max_len, hidden=16, blocks=2, heads=heads, dropout=0.3)
    return model.double().eval()


def right_padded(sequence: list[int], length: int) -> torch.Tensor:
    return torch.tensor([sequence + [0] * (length - len(sequence))])


def test_shapes_and_tied_padding_row():
    model = make_model()
    inputs = torch.tensor([[5, 9, 2, 0, 0], [7, 0, 0, 0, 0]])
    hidden = model(inputs)
    assert hidden.shape == (2, 5, 16)
    assert model.last_hidden(inputs).shape == (2, 16)
    assert model.item_embedding.weight.shape == (51, 16)
    assert torch.count_nonzero(model.item_embedding.weight[0]) == 0
    assert torch.count_nonzero(model.item_embedding.weight[1:]) > 0


def test_padding_and_max_len_do_not_change_real_positions():
    sequence = [4, 17, 33, 8, 21]
    short_model = make_model(max_len=8)
    long_model = make_model(max_len=20)  # same seed: same weights for the shared positions
    long_model.position_embedding.weight.data[:8] = short_model.position_embedding.weight.data
    long_model.load_state_dict(
        {k: v for k, v in short_model.state_dict().items() if not k.startswith("position")}, strict=False
    )
    reference = short_model(right_padded(sequence, 5))[0]
    for model, length in ((short_model, 8), (long_model, 9), (long_model, 20)):
        hidden = model(right_padded(sequence, length))[0, :5]
        torch.testing.assert_close(hidden, reference, rtol=0, atol=1e-12)
    # in a batch next to a longer sequence, too
    batch = torch.cat([right_padded(sequence, 7), right_padded([1, 2, 3, 4, 5, 6, 7], 7)])
    torch.testing.assert_close(short_model(batch)[0, :5], reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(short_model.last_hidden(batch)[0], reference[-1], rtol=0, atol=1e-12)


def test_each_position_equals_its_prefix_evaluated_alone():
    model = make_model()
    sequence = [3, 14, 15, 9, 26, 5]
    hidden = model(right_padded(sequence, 10))[0]
    for end in range(1, len(sequence) + 1):
        prefix_last = model.last_hidden(right_padded(sequence[:end], 10))[0]
        torch.testing.assert_close(hidden[end - 1], prefix_last, rtol=0, atol=1e-12)


def test_causality_later_items_do_not_change_earlier_outputs():
    model = make_model()
    original = torch.tensor([[3, 14, 15, 9, 26, 5]])
    changed = original.clone()
    changed[0, 4] = 42
    before, after = model(original)[0], model(changed)[0]
    torch.testing.assert_close(after[:4], before[:4], rtol=0, atol=1e-12)
    assert (after[4:] - before[4:]).abs().max() > 1e-3


def test_dropout_only_in_training_mode():
    model = make_model()
    inputs = torch.tensor([[3, 14, 15, 9]])
    torch.testing.assert_close(model(inputs), model(inputs), rtol=0, atol=0)
    model.train()
    assert (model(inputs) - model(inputs)).abs().max() > 1e-6


def test_gradients_reach_the_tied_item_table():
    model = make_model().train()
    inputs = torch.tensor([[3, 14, 15, 0]])
    hidden = model(inputs)
    logits = hidden @ model.item_embedding.weight[1:].T
    logits.sum().backward()
    grad = model.item_embedding.weight.grad
    assert grad is not None and torch.count_nonzero(grad[0]) == 0  # padding row stays fixed
    assert grad[1:].abs().sum() > 0


def test_bad_inputs_name_the_argument():
    model = make_model(max_len=4)
    with pytest.raises(ValueError, match="inputs: length 5 exceeds"):
        model(torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs: expected"):
        model(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="no items"):
        model.last_hidden(torch.tensor([[1, 2], [0, 0]]))
