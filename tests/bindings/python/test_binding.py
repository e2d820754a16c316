"""The Python binding, end to end, through the real library, model and SQLite."""

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
    "alarm": [
        "wake me up at seven",
        "set an alarm for 6 am",
        "cancel my morning alarm",
        "snooze the alarm for ten minutes",
        "remind me to get up at half past six",
        "change tomorrow's alarm to eight",
    ],
}

REPLIES = [
    ("on-my-way", "I'm on my way, see you soon"),
    ("running-late", "Sorry, running ten minutes late"),
    ("call-later", "Can't talk now, I'll call you later"),
    ("thanks", "Thank you so much!"),
    ("sounds-good", "Sounds good to me"),
]


def labelled():
    return [attune.LabelledText(text=t, label=label) for label, texts in EXAMPLES.items() for t in texts]


class Recorder(attune.ProgressListener):
    """Collects progress; may throw or cancel on the first event."""

    def __init__(self, throw=False, cancel=None):
        self.events = []
        self.finished = []
        self.throw = throw
        self.cancel = cancel

    def on_progress(self, progress):
        self.events.append(progress)
        if self.cancel is not None:
            self.cancel.cancel()
        if self.throw:
            raise ValueError("the app's listener broke")

    def on_finished(self, succeeded):
        self.finished.append(succeeded)


def feedback(query, key, signal):
    return attune.Feedback(query=query, document_key=key, signal=signal, created_at_ms=None)


def open_personalizer(path, model_dir, key=None):
    return attune.Personalizer.open(
        attune.Config(database_path=str(path), model_dir=model_dir, encryption_key=key)
    )


def test_end_to_end_scenario_persists_across_reopen(tmp_path, model_dir):
    db = tmp_path / "user.db"
    p = open_personalizer(db, model_dir)
    assert p.dimension() == 384

    added = p.add_examples("intents", labelled())
    assert (added.inserted, added.duplicates) == (18, 0)
    assert {c.label: c.examples for c in p.labels("intents")} == {"weather": 6, "music": 6, "alarm": 6}

    recorder = Recorder()
    summary = p.train("intents", attune.TrainSettings(seed=7), recorder, None)
    assert summary.promoted and summary.examples == 18 and summary.classes == 3
    epochs = [e for e in recorder.events if isinstance(e, attune.Progress.EPOCH)]
    assert epochs and all(e.loss >= 0 for e in epochs)
    assert recorder.finished == [True]

    predictions = p.predict("intents", ["is it sunny tomorrow", "play something relaxing"], 3)
    assert [pr.labels[0].label for pr in predictions] == ["weather", "music"]
    assert all(pr.source == attune.PredictionSource.TRAINED_HEAD for pr in predictions)
    for pr in predictions:
        probabilities = [s.probability for s in pr.labels]
        assert probabilities == sorted(probabilities, reverse=True)
        assert abs(sum(probabilities) - 1.0) < 1e-4

    # Chat replies: the incoming message is the query, the chosen reply the feedback.
    docs = [attune.Document(key=k, text=t, metadata=None) for k, t in REPLIES]
    assert p.add_documents("replies", docs) == len(REPLIES)
    plain = p.search("replies", "where are you?", 5)
    assert len(plain) == 5
    assert [h.score for h in plain] == sorted((h.score for h in plain), reverse=True)
    assert plain[0].key != "running-late"
    for _ in range(5):  # the user is shown the replies and picks "running late" each time
        for hit in plain:
            p.record_feedback("replies", feedback("where are you?", hit.key, attune.Signal.IMPRESSION()))
        p.record_feedback("replies", feedback("where are you?", "running-late", attune.Signal.CLICK()))
    personal = p.search("replies", "where are you?", 5)
    assert personal[0].key == "running-late"

    forgotten = p.forget("intents", attune.ForgetScope.LABEL(label="alarm"))
    assert forgotten.examples == 6
    assert "alarm" not in {c.label for c in p.labels("intents")}
    after = p.predict("intents", ["wake me up at seven"], 3)[0]
    assert "alarm" not in {s.label for s in after.labels}

    export = tmp_path / "export.json"
    p.export_json(str(export))
    assert "play some jazz" in export.read_text() and "wake me up at seven" not in export.read_text()
    del p

    reopened = open_personalizer(db, model_dir)
    stats = reopened.stats("intents")
    assert (stats.examples, stats.labels) == (12, 2)
    assert stats.active_head_version is not None
    assert reopened.predict("intents", ["put on some music"], 1)[0].labels[0].label == "music"
    assert reopened.stats("replies").feedback == 30


def test_zero_shot_then_prototypes_lifecycle(tmp_path, model_dir):
    p = open_personalizer(tmp_path / "z.db", model_dir)
    with pytest.raises(attune.AttuneError.UnknownTask):
        p.predict("new", ["hello"], 1)
    p.describe_label("new", "weather", "a question about the weather forecast")
    p.describe_label("new", "music", "a request to play music")
    zero = p.predict("new", ["will it snow"], 2)[0]
    assert zero.source == attune.PredictionSource.ZERO_SHOT and zero.labels[0].label == "weather"
    p.add_examples("new", [attune.LabelledText(text="play jazz", label="music")])
    assert p.predict("new", ["play rock"], 1)[0].source == attune.PredictionSource.PROTOTYPES


def test_typed_errors(tmp_path, model_dir, tiny_model_dir):
    with pytest.raises(attune.AttuneError.Model) as bad_model:
        open_personalizer(tmp_path / "a.db", str(tmp_path / "no-model-here"))
    assert "manifest" in str(bad_model.value)

    p = open_personalizer(tmp_path / "b.db", tiny_model_dir)
    p.add_examples("empty", [attune.LabelledText(text="x", label="a")])
    p.forget("empty", attune.ForgetScope.LABEL(label="a"))
    with pytest.raises(attune.AttuneError.NotTrained):
        p.predict("empty", ["hi"], 1)
    p.add_examples("t", [attune.LabelledText(text="x", label="a")])
    with pytest.raises(attune.AttuneError.InvalidInput):
        p.add_examples("t", [attune.LabelledText(text="   ", label="a")])
    with pytest.raises(attune.AttuneError.InvalidInput):
        p.add_examples("t", [attune.LabelledText(text="x" * ((1 << 20) + 1), label="a")])
    assert p.stats("t").examples == 1  # nothing stored was lost

    key = attune.EncryptionKey.PASSPHRASE(secret="correct horse battery staple")
    encrypted = open_personalizer(tmp_path / "secret.db", tiny_model_dir, key)
    encrypted.add_examples("t", [attune.LabelledText(text="private words", label="a")])
    del encrypted
    with pytest.raises(attune.AttuneError.EncryptionKey):
        open_personalizer(tmp_path / "secret.db", tiny_model_dir, attune.EncryptionKey.PASSPHRASE(secret="wrong"))
    with pytest.raises(attune.AttuneError.EncryptionKey):
        open_personalizer(tmp_path / "secret.db", tiny_model_dir)
    with pytest.raises(attune.AttuneError.EncryptionKey):
        open_personalizer(tmp_path / "b.db", tiny_model_dir, attune.EncryptionKey.RAW(bytes=bytes(range(32))))
    with pytest.raises(attune.AttuneError.EncryptionKey):
        open_personalizer(tmp_path / "c.db", tiny_model_dir, attune.EncryptionKey.RAW(bytes=b"short"))
    reopened = open_personalizer(tmp_path / "secret.db", tiny_model_dir,
                                 attune.EncryptionKey.PASSPHRASE(secret="correct horse battery staple"))
    assert reopened.stats("t").examples == 1


def test_cancellation_and_a_throwing_listener(tmp_path, tiny_model_dir):
    p = open_personalizer(tmp_path / "c.db", tiny_model_dir)
    texts = [f"sentence number {i} about things" for i in range(300)]

    token = attune.CancelToken()
    cancelling = Recorder(cancel=token)
    with pytest.raises(attune.AttuneError.Cancelled):
        p.embed(texts, cancelling, token)
    assert token.is_cancelled() and cancelling.finished == [False]

    throwing = Recorder(throw=True)
    with pytest.raises(attune.AttuneError.ListenerFailed) as failed:
        p.embed(texts, throwing, None)
    assert "listener broke" in str(failed.value)
    assert len(throwing.events) == 1

    progress = Recorder()
    vectors = p.embed(texts, progress, None)
    assert len(vectors) == 300 and len(vectors[0]) == p.dimension()
    done = [e.done for e in progress.events]
    assert done == sorted(done) and done[-1] == 300

    p.add_examples("t", [attune.LabelledText(text=t, label=str(i % 3)) for i, t in enumerate(texts[:60])])
    train_token = attune.CancelToken()
    train_token.cancel()
    with pytest.raises(attune.AttuneError.Cancelled):
        p.train("t", attune.TrainSettings(head=attune.HeadType.LINEAR), None, train_token)
    assert p.heads("t") == []


def test_many_python_threads_at_once(tmp_path, model_dir):
    p = open_personalizer(tmp_path / "threads.db", model_dir)
    p.add_examples("intents", labelled())
    p.train("intents", attune.TrainSettings(), None, None)
    p.add_documents("docs", [attune.Document(key=k, text=t, metadata=None) for k, t in REPLIES])
    errors = []
    added = []

    def predictor(n):
        try:
            for i in range(15):
                top = p.predict("intents", [f"is it raining in city {n} {i}"], 1)[0].labels[0].label
                assert top == "weather"
                assert len(p.search("docs", f"late for meeting {n} {i}", 3)) == 3
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    def writer():
        try:
            for i in range(20):
                p.add_examples("intents", [attune.LabelledText(text=f"play track {i}", label="music")])
                added.append(i)
            p.train("intents", attune.TrainSettings(), None, None)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=predictor, args=(n,)) for n in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert p.stats("intents").examples == 18 + len(added) == 38


def test_model_upgrade_from_the_tiny_to_the_default_model(tmp_path, model_dir, tiny_model_dir):
    p = open_personalizer(tmp_path / "up.db", tiny_model_dir)
    p.add_examples("intents", labelled())
    p.train("intents", attune.TrainSettings(), None, None)
    old = p.model_fingerprint()
    progress = Recorder()
    summary = p.upgrade_model(model_dir, progress, None)
    assert (summary.from_fingerprint, summary.to_fingerprint) == (old, p.model_fingerprint())
    assert summary.texts == summary.embedded_now == 18
    assert [e.done for e in progress.events][-1] == 18 and progress.finished == [True]
    assert [t.task for t in summary.retrained] == ["intents"]
    assert p.dimension() == 384
    top = p.predict("intents", ["is it sunny tomorrow"], 1)[0]
    assert top.source == attune.PredictionSource.TRAINED_HEAD and top.labels[0].label == "weather"


def intents():
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "data/intents.json"
    return json.loads(path.read_text())["intents"]


def examples(data, start, end):
    return [attune.LabelledText(text=t, label=i["label"]) for i in data for t in i["train"][start:end]]


def one_then_three(path, model):
    """Held-out accuracy after one, then three examples per intent."""
    data = intents()
    held_out = [attune.LabelledText(text=t, label=i["label"]) for i in data for t in i["held_out"]]
    p = open_personalizer(path, model)
    for intent in data:
        p.describe_label("support", intent["label"], intent["description"])
    p.add_examples("support", examples(data, 0, 1))
    assert p.train("support", attune.TrainSettings(), None, None).promoted
    after_one = p.evaluate("support", held_out).accuracy
    p.add_examples("support", examples(data, 1, 3))
    second = p.train("support", attune.TrainSettings(), None, None)
    assert second.promoted, second.promotion_reason
    return after_one, p.evaluate("support", held_out).accuracy


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_more_examples_are_promoted_and_help(tmp_path, which, request):
    model = request.getfixturevalue("tiny_model_dir" if which == "tiny" else "model_dir")
    after_one, after_three = one_then_three(tmp_path / "loop.db", model)
    assert after_three > after_one, (after_one, after_three)


def test_private_heads_are_visible_and_errors_are_typed(tmp_path, tiny_model_dir):
    data = intents()
    p = open_personalizer(tmp_path / "dp.db", tiny_model_dir)
    for intent in data:
        p.describe_label("support", intent["label"], intent["description"])
    p.add_examples("support", examples(data, 0, 3))
    p.train("support", attune.TrainSettings(dp_epsilon=8.0), None, None)
    head = p.heads("support")[0]
    assert head.private and 0 < head.epsilon <= 8.0 and head.delta > 0
    # Forgetting retrains privately, charged to the same budget.
    forgotten = p.forget("support", attune.ForgetScope.TEXT(text=data[0]["train"][0]))
    assert isinstance(forgotten.retrain, attune.Retrain.RETRAINED) and forgotten.retrain.private
    assert all(h.private for h in p.heads("support"))
    with pytest.raises(attune.AttuneError.InvalidInput):
        p.predict("support", ["play a song"], 0)

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database at all, " * 200)
    with pytest.raises(attune.AttuneError.Corrupt):
        open_personalizer(damaged, tiny_model_dir)
