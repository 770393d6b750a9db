import pytest
import torch

from mechtune.eval.retention import embedding_drift, general_sentences


def test_general_sentences_are_everyday_and_distinct():
    sentences = general_sentences()
    assert len(sentences) >= 80
    assert len(set(sentences)) == len(sentences)
    medical = ("effusion", "pneumothorax", "edema", "lung", "radiograph", "cardiomegaly")
    assert not any(w in s.lower() for s in sentences for w in medical)


def test_drift_is_one_for_unchanged_and_lower_for_changed():
    x = torch.nn.functional.normalize(
        torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    assert embedding_drift(x, x).value == pytest.approx(1.0)
    y = x.clone()
    y[:, 0] += 1.0
    est = embedding_drift(x, y)
    expected = torch.nn.functional.cosine_similarity(x, y, dim=-1).mean().item()
    assert est.value == pytest.approx(expected) and est.value < 1
    with pytest.raises(ValueError, match="differ in shape"):
        embedding_drift(x, x[:3])
