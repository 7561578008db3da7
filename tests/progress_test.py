"""ctjax.progress: the bars of long calls, and CTJAX_PROGRESS=0."""

import numpy as np
import pytest

from ctjax import CTReference, progress


def test_enabled_follows_the_call_unless_turned_off(monkeypatch):
  monkeypatch.delenv("CTJAX_PROGRESS", raising=False)
  assert progress.enabled(True)
  assert not progress.enabled(False)
  monkeypatch.setenv("CTJAX_PROGRESS", "0")
  assert not progress.enabled(True)
  monkeypatch.setenv("CTJAX_PROGRESS", "1")
  assert progress.enabled(True)


@pytest.fixture(scope="module")
def layers():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(4, 300, 8)).astype(np.float32)
  test = rng.normal(size=(4, 120, 8)).astype(np.float32)
  return train, test


@pytest.mark.parametrize("value,shown", [(None, True), ("0", False)])
def test_fit_bar_and_its_switch(layers, monkeypatch, capsys, value, shown):
  if value is None:
    monkeypatch.delenv("CTJAX_PROGRESS", raising=False)
  else:
    monkeypatch.setenv("CTJAX_PROGRESS", value)
  ref = CTReference.fit(*layers, n_cells=3, n_components=4, n_init=2)
  assert ref.n_layers == 4
  assert ("fit:" in capsys.readouterr().err) == shown


def test_score_many_bar_and_its_switch(layers, monkeypatch, capsys):
  train, test = layers
  ref = CTReference.fit(train, test, n_cells=3, n_components=4, n_init=2)
  gens = np.random.default_rng(1).normal(size=(2, 4, 60, 8)).astype(np.float32)
  capsys.readouterr()
  monkeypatch.delenv("CTJAX_PROGRESS", raising=False)
  ref.score_many(gens, progress=True)
  assert "score_many" in capsys.readouterr().err
  monkeypatch.setenv("CTJAX_PROGRESS", "0")
  ref.score_many(gens, progress=True)
  assert "score_many" not in capsys.readouterr().err
