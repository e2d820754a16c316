"""The story of tests/data/scenario.json through the Python binding, as every
binding's test suite tells it."""

import asyncio
import json
import pathlib

import attune

SCENARIO = json.loads((pathlib.Path(__file__).resolve().parents[2] / "data/scenario.json").read_text())


def feedback(query, key, signal):
    return attune.Feedback(query=query, document_key=key, signal=signal)


async def top_label(p, task, text):
    prediction = await p.predict_one(task, text)
    probabilities = [s.probability for s in prediction.labels]
    assert probabilities == sorted(probabilities, reverse=True)
    return prediction.labels[0].label, prediction.source


async def story(db, model_dir):
    s = SCENARIO
    task = s["task"]
    config = attune.Config(database_path=str(db), model_dir=model_dir)
    async with await attune.Personalizer.open(config) as p:
        assert p.dimension() == s["dimension"]
        for d in s["descriptions"]:
            await p.describe_label(task, d["label"], d["description"])
        for probe in s["zero_shot"]:
            assert await top_label(p, task, probe["text"]) == (probe["label"], attune.PredictionSource.ZERO_SHOT)

        examples = [attune.LabelledText(text=e["text"], label=e["label"]) for e in s["examples"]]
        assert (await p.add_examples(task, examples)).inserted == len(examples)
        trained = await p.train(task, attune.TrainSettings(seed=s["seed"]))
        assert trained.promoted, trained.promotion_reason
        assert trained.classes == len(s["descriptions"])
        for probe in s["trained"]:
            assert await top_label(p, task, probe["text"]) == (probe["label"], attune.PredictionSource.TRAINED_HEAD)

        r = s["replies"]
        documents = [attune.Document(key=d["key"], text=d["text"]) for d in r["documents"]]
        await p.add_documents(r["task"], documents)
        plain = await p.search(r["task"], r["query"], len(documents))
        assert plain[0].key != r["chosen"]
        for _ in range(r["rounds"]):
            for hit in plain:
                await p.record_feedback(r["task"], feedback(r["query"], hit.key, attune.Signal.IMPRESSION()))
            await p.record_feedback(r["task"], feedback(r["query"], r["chosen"], attune.Signal.CLICK()))
        assert (await p.search(r["task"], r["query"], len(documents)))[0].key == r["chosen"]

        forgotten = await p.forget(task, attune.ForgetScope.LABEL(label=s["forget_label"]))
        assert forgotten.examples == s["after_forget"]["examples_forgotten"]
        after = await p.predict_one(task, s["after_forget"]["text"])
        assert all(scored.label != s["forget_label"] for scored in after.labels)

        export = db.with_name("export.json")
        await p.export_json(str(export))
        exported = export.read_text()
        assert s["export"]["contains"] in exported and s["export"]["lacks"] not in exported

    async with await attune.Personalizer.open(config) as reopened:
        stats = reopened.stats(task)
        expected = s["reopened"]
        assert (stats.examples, stats.labels) == (expected["examples"], expected["labels"])
        assert stats.active_head_version is not None
        assert (await top_label(reopened, task, expected["predict"]["text"]))[0] == expected["predict"]["label"]
        assert reopened.stats(r["task"]).feedback == expected["feedback"]


def test_the_shared_scenario(tmp_path, model_dir):
    asyncio.run(story(tmp_path / "user.db", model_dir))
