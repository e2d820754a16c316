"""attune.sync: the same API as blocking calls, from a script, from threads
and from inside a running event loop (a notebook's)."""

import asyncio
import threading

import numpy
import pytest

import attune
import attune.sync


def config(path, model_dir):
    return attune.Config(database_path=str(path), model_dir=model_dir)


EXAMPLES = [
    attune.LabelledText(text=f"{label} message {i}", label=label)
    for label in ("bills", "family", "travel")
    for i in range(6)
]


def test_a_task_is_trained_and_predicted_without_await(tmp_path, tiny_model_dir):
    with attune.sync.Personalizer.open(config(tmp_path / "sync.db", tiny_model_dir)) as p:
        assert p.add_examples("inbox", EXAMPLES).inserted == len(EXAMPLES)
        summary = p.train("inbox")
        assert summary.promoted, summary.promotion_reason
        best = p.predict_one("inbox", "travel message 3")
        assert best.source == attune.PredictionSource.TRAINED_HEAD and len(best.labels) == 3
        vectors = p.embed(["one", "two"])
        assert isinstance(vectors, numpy.ndarray) and vectors.shape == (2, p.dimension())
        assert vectors.dtype == numpy.float32
        with pytest.raises(attune.AttuneError.UnknownTask):
            p.predict_one("no-such-task", "hi")
    with pytest.raises(attune.AttuneError.Closed):
        p.stats("inbox")


def test_calls_from_inside_a_running_event_loop_and_from_threads(tmp_path, tiny_model_dir):
    model = attune.sync.Model.load(tiny_model_dir, threads=1)
    with attune.sync.Personalizer.open_with_model(str(tmp_path / "loop.db"), model) as p:
        p.add_examples("inbox", EXAMPLES)

        async def inside_a_loop():
            # A notebook cell: its own loop is running, and asyncio.run would refuse.
            return p.predict_one("inbox", "bills message 1")

        assert asyncio.run(inside_a_loop()).labels
        answers = []

        def worker():
            answers.append(p.predict_one("inbox", "family message 2").labels[0].label)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 4 and all(a in ("bills", "family", "travel") for a in answers)
        assert model.fingerprint() == p.model_fingerprint()
