"""The Python binding at its boundary: coroutines off the event loop,
cancellation, close, typed errors, listeners, many callers at once, and
what Python code expects (repr, context managers, NumPy). Ranking quality
is the shared scenario's job (test_scenario.py)."""

import array
import asyncio
import threading

import pytest

import attune

EXAMPLES = {
    "weather": [
        "will it rain tomorrow",
        "how hot is it outside today",
        "is there snow in the forecast",
        "do I need an umbrella this afternoon",
        "what's the temperature this weekend",
        "is it going to be windy tonight",
    ],
    "music": [
        "play some jazz",
        "put on my running playlist",
        "skip this song",
        "turn the volume up on the music",
        "play the latest album by my favourite band",
        "shuffle my liked songs",
    ],
}


def run(coroutine):
    return asyncio.run(coroutine)


def labelled():
    return [attune.LabelledText(text=t, label=label) for label, texts in EXAMPLES.items() for t in texts]


class Recorder(attune.ProgressListener):
    """Collects progress; may throw on the first event, or hold the call
    there until `release` is set (so a test can cancel it at a known point)."""

    def __init__(self, throw=False, hold=False):
        self.events = []
        self.finished = []
        self.threads = set()
        self.throw = throw
        self.reached = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def on_progress(self, progress):
        self.events.append(progress)
        self.threads.add(threading.current_thread().name)
        self.reached.set()
        assert self.release.wait(60), "the test never released the call"
        if self.throw:
            raise ValueError("the app's listener broke")

    def on_finished(self, succeeded):
        self.finished.append(succeeded)


def config(path, model_dir, key=None):
    return attune.Config(database_path=str(path), model_dir=model_dir, encryption_key=key)


def open_personalizer(path, model_dir, key=None):
    return run(attune.Personalizer.open(config(path, model_dir, key)))


async def cancel_at_first_progress(start_call):
    """Starts a call, cancels its task at its first progress report, and
    lets the call go on only once the task is cancelled."""
    recorder = Recorder(hold=True)
    task = asyncio.ensure_future(start_call(recorder))
    assert await asyncio.to_thread(recorder.reached.wait, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recorder.release.set()
    return recorder


def test_a_cancelled_import_or_training_leaves_the_database_as_before(tmp_path, tiny_model_dir):
    db = tmp_path / "cancel.db"
    texts = [f"message number {i} about the weather and music" for i in range(3000)]
    history = tmp_path / "history.csv"
    history.write_text("text,label\n" + "\n".join(f"{t},{'ab'[i % 2]}" for i, t in enumerate(texts)) + "\n")

    async def scenario():
        p = await attune.Personalizer.open(config(db, tiny_model_dir))
        await p.add_examples("t", labelled())
        before = (p.stats("t"), p.labels("t"), p.heads("t"))
        recorder = await cancel_at_first_progress(lambda r: p.import_file("t", str(history), r))
        recorder = await cancel_at_first_progress(
            lambda r: p.train("t", attune.TrainSettings(head=attune.HeadType.MLP, epochs=50), r)
        )
        p.close()  # waits for the cancelled calls to stop
        assert recorder.finished == [False]
        p = await attune.Personalizer.open(config(db, tiny_model_dir))
        assert (p.stats("t"), p.labels("t"), p.heads("t")) == before
        assert (await p.import_file("t", str(history))).inserted == 3000
        p.close()

    run(scenario())


def test_the_event_loop_keeps_running_during_a_long_call(tmp_path, model_dir):
    async def scenario():
        async with await attune.Personalizer.open(config(tmp_path / "loop.db", model_dir)) as p:
            ticks = 0
            stop = asyncio.Event()

            async def ticker():
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0.01)

            counting = asyncio.ensure_future(ticker())
            loop = asyncio.get_running_loop()
            started = loop.time()
            await p.embed([f"sentence {i} about the weather" for i in range(2000)])
            elapsed = loop.time() - started
            stop.set()
            await counting
            # A blocked loop would tick once whatever the call took; a free
            # one about every 10 ms of it.
            assert ticks >= 5 and ticks >= elapsed / 0.01 * 0.3, (ticks, elapsed)

    run(scenario())


def test_calls_after_close_are_typed_errors(tmp_path, tiny_model_dir):
    async def scenario():
        p = await attune.Personalizer.open(config(tmp_path / "closed.db", tiny_model_dir))
        await p.add_examples("t", labelled())
        # A call in flight when close() comes is stopped and says so; close waits for it.
        recorder = Recorder(hold=True)
        call = asyncio.ensure_future(p.embed([f"text {i}" for i in range(2000)], recorder))
        assert await asyncio.to_thread(recorder.reached.wait, 60)
        closing = asyncio.ensure_future(asyncio.to_thread(p.close))
        while True:  # until close() has refused new calls
            try:
                p.stats("t")
            except attune.AttuneError.Closed:
                break
            await asyncio.sleep(0.001)
        assert not closing.done(), "close() waits for the call in flight"
        recorder.release.set()
        await closing
        with pytest.raises(attune.AttuneError.Closed):
            await call
        p.close()  # twice is harmless
        with pytest.raises(attune.AttuneError.Closed):
            p.stats("t")
        with pytest.raises(attune.AttuneError.Closed):
            await p.predict_one("t", "play jazz")
        with pytest.raises(attune.AttuneError.Closed):
            await p.train("t")
        assert repr(p) == "Personalizer(closed)"
        # The file is released: another personalizer opens it at once.
        async with await attune.Personalizer.open(config(tmp_path / "closed.db", tiny_model_dir)) as again:
            assert again.stats("t").examples == 12

    run(scenario())


def test_interrupt_stops_calls_in_flight_and_the_personalizer_stays_open(tmp_path, tiny_model_dir):
    async def scenario():
        async with await attune.Personalizer.open(config(tmp_path / "i.db", tiny_model_dir)) as p:
            recorder = Recorder(hold=True)
            call = asyncio.ensure_future(p.embed([f"text {i}" for i in range(2000)], recorder))
            assert await asyncio.to_thread(recorder.reached.wait, 60)
            p.interrupt()
            recorder.release.set()
            with pytest.raises(attune.AttuneError.Cancelled):
                await call
            assert len(await p.embed(["still open"])) == 1

    run(scenario())


def test_sixteen_coroutines_at_once(tmp_path, model_dir):
    async def scenario():
        async with await attune.Personalizer.open(config(tmp_path / "gather.db", model_dir)) as p:
            await p.add_examples("intents", labelled())
            await p.train("intents")

            async def predict(n):
                prediction = await p.predict_one("intents", f"is it raining in city {n}")
                return prediction.labels[0].label

            async def add(n):
                await p.add_examples("intents", [attune.LabelledText(text=f"play track {n}", label="music")])
                return "added"

            results = await asyncio.gather(*[predict(n) for n in range(12)], *[add(n) for n in range(4)])
            assert results == ["weather"] * 12 + ["added"] * 4
            assert p.stats("intents").examples == 16

    run(scenario())


def test_python_conveniences(tmp_path, tiny_model_dir):
    async def scenario():
        with await attune.Personalizer.open(config(tmp_path / "c.db", tiny_model_dir)) as p:
            vectors = await p.embed(["one text", "another text"])
            try:
                import numpy as np
            except ImportError:  # without NumPy, rows are lists
                assert isinstance(vectors, list) and len(vectors) == 2 and len(vectors[0]) == p.dimension()
            else:
                assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32
                assert vectors.shape == (2, p.dimension())
            assert repr(p).startswith("Personalizer(model=")
            await p.add_examples("t", labelled())
            summary = await p.train("t")  # settings and listener default
            assert isinstance(summary.head, attune.HeadKind) and isinstance(summary.chosen, attune.CandidateHead)
            assert "TrainSummary(head=HeadKind." in repr(summary)
            head = p.heads("t")[0]
            assert head.kind == summary.head and head.active
            assert head.validation is None or 0.0 <= head.validation.accuracy <= 1.0
            assert repr(attune.LabelledText(text="hi", label="a")) == "LabelledText(text=hi, label=a)"
        with pytest.raises(attune.AttuneError.Closed):
            p.stats("t")

    run(scenario())


def test_typed_errors(tmp_path, tiny_model_dir):
    async def scenario():
        with pytest.raises(attune.AttuneError.Model) as bad_model:
            await attune.Personalizer.open(config(tmp_path / "a.db", str(tmp_path / "no-model-here")))
        assert "manifest" in str(bad_model.value)

        p = await attune.Personalizer.open(config(tmp_path / "b.db", tiny_model_dir))
        with pytest.raises(attune.AttuneError.UnknownTask):
            await p.predict_one("never", "hi")
        await p.add_examples("empty", [attune.LabelledText(text="x", label="a")])
        await p.forget("empty", attune.ForgetScope.LABEL(label="a"))
        with pytest.raises(attune.AttuneError.NotTrained):
            await p.predict("empty", ["hi"], 1)
        await p.add_examples("t", [attune.LabelledText(text="x", label="a")])
        with pytest.raises(attune.AttuneError.InvalidInput):
            await p.add_examples("t", [attune.LabelledText(text="   ", label="a")])
        with pytest.raises(attune.AttuneError.InvalidInput):
            await p.add_examples("t", [attune.LabelledText(text="x" * ((1 << 20) + 1), label="a")])
        with pytest.raises(attune.AttuneError.InvalidInput):
            await p.predict_one("t", "x", 0)
        assert p.stats("t").examples == 1  # nothing stored was lost
        p.close()

        secret = attune.EncryptionKey.PASSPHRASE(secret="correct horse battery staple")
        async with await attune.Personalizer.open(config(tmp_path / "secret.db", tiny_model_dir, secret)) as e:
            await e.add_examples("t", [attune.LabelledText(text="private words", label="a")])
        wrong = [
            ("secret.db", attune.EncryptionKey.PASSPHRASE(secret="wrong")),
            ("secret.db", None),
            ("b.db", attune.EncryptionKey.RAW(bytes=bytes(range(32)))),
            ("c.db", attune.EncryptionKey.RAW(bytes=b"short")),
        ]
        for name, key in wrong:
            with pytest.raises(attune.AttuneError.EncryptionKey):
                await attune.Personalizer.open(config(tmp_path / name, tiny_model_dir, key))
        async with await attune.Personalizer.open(config(tmp_path / "secret.db", tiny_model_dir, secret)) as e:
            assert e.stats("t").examples == 1

        damaged = tmp_path / "damaged.db"
        damaged.write_bytes(b"this is not a database at all, " * 200)
        with pytest.raises(attune.AttuneError.Corrupt):
            await attune.Personalizer.open(config(damaged, tiny_model_dir))

    run(scenario())


def test_listeners_run_on_the_call_thread_and_a_throwing_one_stops_the_call(tmp_path, tiny_model_dir):
    async def scenario():
        async with await attune.Personalizer.open(config(tmp_path / "l.db", tiny_model_dir)) as p:
            texts = [f"sentence number {i} about things" for i in range(300)]
            throwing = Recorder(throw=True)
            with pytest.raises(attune.AttuneError.ListenerFailed) as failed:
                await p.embed(texts, throwing)
            assert "listener broke" in str(failed.value)
            assert len(throwing.events) == 1 and throwing.finished == [False]

            progress = Recorder()
            vectors = await p.embed(texts, progress)
            assert len(vectors) == 300 and len(vectors[0]) == p.dimension()
            done = [e.done for e in progress.events]
            assert done == sorted(done) and done[-1] == 300
            # On the call's own thread, not the event loop's (this test's main thread).
            assert progress.threads and threading.main_thread().name not in progress.threads
            assert progress.finished == [True]

            epochs = Recorder()
            await p.add_examples("t", labelled())
            await p.train("t", attune.TrainSettings(head=attune.HeadType.LINEAR), epochs)
            assert epochs.events and all(isinstance(e, attune.Progress.EPOCH) for e in epochs.events)
            assert all(isinstance(e.candidate, attune.CandidateHead.LINEAR) for e in epochs.events)

            # A token (what Swift needs; here for code that cancels from elsewhere) stops a call too.
            token = attune.CancelToken()
            token.cancel()
            heads = p.heads("t")
            with pytest.raises(attune.AttuneError.Cancelled):
                await p.train("t", attune.TrainSettings(head=attune.HeadType.MLP), cancel=token)
            assert p.heads("t") == heads

    run(scenario())


def test_blocking_python_threads_each_with_their_own_loop(tmp_path, tiny_model_dir):
    p = open_personalizer(tmp_path / "threads.db", tiny_model_dir)
    run(p.add_examples("intents", labelled()))
    errors = []

    def worker(n):
        try:
            for i in range(10):
                run(p.add_examples("intents", [attune.LabelledText(text=f"play track {n} {i}", label="music")]))
                assert run(p.predict_one("intents", "play some jazz")).labels
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert p.stats("intents").examples == 12 + 40
    p.close()


def test_model_upgrade_from_the_tiny_to_the_default_model(tmp_path, model_dir, tiny_model_dir):
    async def scenario():
        async with await attune.Personalizer.open(config(tmp_path / "up.db", tiny_model_dir)) as p:
            await p.add_examples("intents", labelled())
            await p.train("intents")
            old = p.model_fingerprint()
            progress = Recorder()
            summary = await p.upgrade_model(model_dir, progress)
            assert (summary.from_fingerprint, summary.to_fingerprint) == (old, p.model_fingerprint())
            assert summary.texts == summary.embedded_now == 12
            assert [e.done for e in progress.events][-1] == 12 and progress.finished == [True]
            assert [t.task for t in summary.retrained] == ["intents"]
            assert p.dimension() == 384
            top = await p.predict_one("intents", "is it sunny tomorrow")
            assert top.source == attune.PredictionSource.TRAINED_HEAD and top.labels[0].label == "weather"

    run(scenario())


def intents():
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "data/intents.json"
    return json.loads(path.read_text())["intents"]


def examples(data, start, end):
    return [attune.LabelledText(text=t, label=i["label"]) for i in data for t in i["train"][start:end]]


async def one_then_three(path, model):
    """Held-out accuracy after one, then three examples per intent."""
    data = intents()
    held_out = [attune.LabelledText(text=t, label=i["label"]) for i in data for t in i["held_out"]]
    async with await attune.Personalizer.open(config(path, model)) as p:
        for intent in data:
            await p.describe_label("support", intent["label"], intent["description"])
        await p.add_examples("support", examples(data, 0, 1))
        assert (await p.train("support")).promoted
        after_one = (await p.evaluate("support", held_out)).accuracy
        await p.add_examples("support", examples(data, 1, 3))
        second = await p.train("support")
        assert second.promoted, second.promotion_reason
        return after_one, (await p.evaluate("support", held_out)).accuracy


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_more_examples_are_promoted_and_help(tmp_path, which, request):
    model = request.getfixturevalue("tiny_model_dir" if which == "tiny" else "model_dir")
    after_one, after_three = run(one_then_three(tmp_path / "loop.db", model))
    assert after_three > after_one, (after_one, after_three)


def test_private_heads_are_visible(tmp_path, tiny_model_dir):
    async def scenario():
        data = intents()
        async with await attune.Personalizer.open(config(tmp_path / "dp.db", tiny_model_dir)) as p:
            for intent in data:
                await p.describe_label("support", intent["label"], intent["description"])
            await p.add_examples("support", examples(data, 0, 3))
            summary = await p.train("support", attune.TrainSettings(dp_epsilon=8.0))
            assert summary.validation_method == attune.ValidationMethod.DIFFERENTIAL_PRIVACY()
            assert isinstance(summary.chosen, attune.CandidateHead.PRIVATE_LINEAR)
            head = p.heads("support")[0]
            assert head.private and 0 < head.epsilon <= 8.0 and head.delta > 0
            # Forgetting retrains privately, charged to the same budget.
            forgotten = await p.forget("support", attune.ForgetScope.TEXT(text=data[0]["train"][0]))
            assert isinstance(forgotten.retrain, attune.Retrain.RETRAINED) and forgotten.retrain.private
            assert all(h.private for h in p.heads("support"))

    run(scenario())


def test_adapting_the_top_layers_is_a_training_setting(tmp_path, model_dir, tiny_model_dir):
    if model_dir == tiny_model_dir:
        pytest.skip("the tiny model has one layer; adaptation takes the top two")

    async def scenario():
        async with await attune.Personalizer.open(config(tmp_path / "adapt.db", model_dir)) as p:
            await p.add_examples("t", labelled())
            frozen = await p.train("t", attune.TrainSettings(adapt=attune.AdaptMode.NEVER))
            assert not frozen.adapted and frozen.adaptation_note is None
            forced = await p.train("t", attune.TrainSettings(adapt=attune.AdaptMode.ALWAYS))
            assert forced.adapted and forced.adaptation_note is None, forced
            assert p.stats("t").trunk_states == len(labelled())
            best = await p.predict_one("t", "is it sunny outside")
            assert best.labels[0].label == "weather"
            # A private task never adapts; forcing it is a typed error.
            await p.train("t", attune.TrainSettings(dp_epsilon=8.0))
            with pytest.raises(attune.AttuneError.InvalidInput):
                await p.train("t", attune.TrainSettings(adapt=attune.AdaptMode.ALWAYS))

    run(scenario())


def test_federated_calls_at_the_boundary(tmp_path, tiny_model_dir):
    async def scenario():
        data = intents()
        labels = [i["label"] for i in data]
        async with await attune.Personalizer.open(config(tmp_path / "fed.db", tiny_model_dir)) as p:
            await p.add_examples("support", examples(data, 0, 3))
            zero = attune.shared_model_zeros(p.model_fingerprint(), labels, p.dimension())
            assert len(zero.weights) == len(labels) * p.dimension() and len(zero.bias) == len(labels)
            update = await p.federated_fit("support", zero)
            assert update.examples == 24 and update.ignored == 0
            assert any(w != 0.0 for w in update.model.weights)
            metrics = await p.federated_evaluate("support", update.model)
            assert metrics.examples == 24 and metrics.accuracy > 0

            blob = attune.shared_model_to_bytes(update.model)
            assert attune.shared_model_from_bytes(blob, p.model_fingerprint()) == update.model
            assert not any(t.encode() in blob for i in data for t in i["train"]), "an update holds no text"
            with pytest.raises(attune.AttuneError.InvalidInput):
                attune.shared_model_from_bytes(blob[: len(blob) // 2], p.model_fingerprint())
            with pytest.raises(attune.AttuneError.Model):
                attune.shared_model_from_bytes(blob, "another-backbone")
            nan = attune.SharedModel(fingerprint=zero.fingerprint, labels=labels,
                                     weights=[float("nan")] * len(zero.weights), bias=zero.bias)
            with pytest.raises(attune.AttuneError.InvalidInput):
                await p.federated_fit("support", nan)

            adopted = await p.adopt_shared("support", update.model)
            assert adopted.active
            assert (await p.predict_one("support", "hello")).source == attune.PredictionSource.SHARED_HEAD
            other = attune.shared_model_zeros(p.model_fingerprint(), ["a", "b"], p.dimension())
            with pytest.raises(attune.AttuneError.InvalidInput):
                await p.adopt_shared("support", other)
            assert len(p.heads("support")) == 1

    run(scenario())


def test_float_lists_cross_the_boundary_bit_for_bit(tmp_path, tiny_model_dir):
    # The package moves f32 lists in bulk (attune/__init__.py): values, order and errors as before.
    numpy = pytest.importorskip("numpy")

    async def scenario():
        async with await attune.Personalizer.open(config(tmp_path / "floats.db", tiny_model_dir)) as p:
            dim, fingerprint = p.dimension(), p.model_fingerprint()
            values = [(-1) ** i * 2.0 ** (i % 40 - 20) + i / 7 for i in range(2 * dim)]
            model = attune.SharedModel(fingerprint=fingerprint, labels=["a", "b"], weights=values, bias=[0.5, -3.25])
            back = attune.shared_model_from_bytes(attune.shared_model_to_bytes(model), fingerprint)
            assert back.weights == array.array("f", values).tolist() and back.bias == [0.5, -3.25]
            from_numpy = attune.SharedModel(fingerprint=fingerprint, labels=["a", "b"],
                                            weights=numpy.asarray(values, dtype=numpy.float32), bias=[0.0, 0.0])
            assert attune.shared_model_from_bytes(attune.shared_model_to_bytes(from_numpy), fingerprint).weights == back.weights
            with pytest.raises(TypeError):
                attune.shared_model_to_bytes(attune.SharedModel(fingerprint=fingerprint, labels=["a"],
                                                                weights=["0.5"] * dim, bias=[0.0]))
            vectors = await p.embed(["play some music", "what is the weather"])
            again = await p.embed(["what is the weather"])
            assert vectors.shape == (2, dim) and numpy.isfinite(vectors).all() and numpy.allclose(vectors[1], again[0], atol=1e-5)

    run(scenario())


def test_many_databases_share_one_loaded_model(tmp_path, tiny_model_dir):
    async def scenario():
        model = await attune.Model.load(tiny_model_dir)
        users = [await attune.Personalizer.open_with_model(str(tmp_path / f"user-{u}.db"), model) for u in range(3)]
        for u, p in enumerate(users):
            assert p.model_fingerprint() == model.fingerprint() and p.dimension() == model.dimension()
            await p.add_examples("t", [attune.LabelledText(text=f"user {u} plays music", label="music")])
        assert [p.stats("t").examples for p in users] == [1, 1, 1]
        for p in users:
            p.close()

    run(scenario())
