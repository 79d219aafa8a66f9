"""Shapes of real text, text-pair and multi-label text competitions (synthetic words, real layout).

The words that carry a row's label are cue words mixed into filler, so a bag-of-words member
learns them from a couple of hundred rows; the headers, file names and packing are the
competitions' own.
"""

from __future__ import annotations

import numpy as np

from ..shapes import ShapeTables
from ._build import BAD, FILLER, GOOD, R_TRAIN, Gen, Ids, N, assemble

_NLI_CUES = {0: ("same", "indeed", "agrees"), 1: ("maybe", "perhaps", "possibly"), 2: ("never", "opposite", "denies")}


def contradictory_watson(rng: np.random.Generator) -> ShapeTables:
    """contradictory-my-dear-watson: ``id,premise,hypothesis,lang_abv,language,label``; the
    sample says ``id,prediction``."""
    g = Gen(rng)
    label = g.cut([0, 1, 2], noise=0.1).astype(np.int64)
    lang = g.pick(["en", "fr", "th"])
    cols = {"premise": g.words(g.pick(["x"]), {"x": FILLER}, FILLER),
            "hypothesis": g.words(label, _NLI_CUES, FILLER), "lang_abv": lang,
            "language": np.array([{"en": "English", "fr": "French", "th": "Thai"}[x] for x in lang], dtype=object),
            "label": label}
    return assemble(cols, ["label"], Ids.shared("id", g.hex_ids(10)), value_columns=["prediction"], placeholder=0)


def movie_reviews(rng: np.random.Generator) -> ShapeTables:
    """sentiment-analysis-on-movie-reviews: train.tsv.zip and test.tsv.zip inside the download
    (``PhraseId,SentenceId,Phrase,Sentiment`` 0..4), sampleSubmission.csv ``PhraseId,Sentiment``."""
    g = Gen(rng)
    sentiment = g.cut([0, 1, 2, 3, 4], noise=0.05).astype(np.int64)
    cues = {0: BAD[:3], 1: BAD[3:], 2: ("fine", "okay", "average"), 3: GOOD[3:], 4: GOOD[:3]}
    cols = {"SentenceId": np.arange(N) // 3 + 1, "Phrase": g.words(sentiment, cues, FILLER), "Sentiment": sentiment}
    return assemble(cols, ["Sentiment"], Ids.shared("PhraseId", np.arange(1, N + 1)), placeholder=2)


TOXIC_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
_TOXIC_CUES = {"toxic": "idiot", "severe_toxic": "scum", "obscene": "damn", "threat": "hurt", "insult": "loser",
               "identity_hate": "hater"}


def toxic_comments(rng: np.random.Generator) -> ShapeTables:
    """jigsaw-toxic-comment-classification-challenge: train.csv.zip ``id,comment_text`` and six
    0/1 labels, test.csv.zip, sample_submission.csv.zip and test_labels.csv.zip inside."""
    g = Gen(rng)
    labels = {name: (g.rng.random(N) < 0.35).astype(np.int64) for name in TOXIC_LABELS}
    texts = []
    for i in range(N):
        words = [str(w) for w in g.rng.choice(np.asarray(FILLER), size=8)]
        words += [_TOXIC_CUES[name] for name in TOXIC_LABELS if labels[name][i]]
        texts.append(" ".join(g.rng.permutation(words)).capitalize() + ".")
    return assemble({"comment_text": texts, **labels}, list(TOXIC_LABELS), Ids.shared("id", g.hex_ids(16)), placeholder=0.5)


def quora(rng: np.random.Generator) -> ShapeTables:
    """quora-question-pairs: train ``id,qid1,qid2,question1,question2,is_duplicate``, test
    ``test_id,question1,question2``, sample ``test_id,is_duplicate``; all zipped inside."""
    g = Gen(rng)
    dup = (g.score > 0.3).astype(np.int64)
    topics = g.pick(["python", "travel", "money", "health", "music"])
    other = g.pick(["cooking", "sports", "physics", "movies", "cars"])
    q1 = [f"How do I learn {t} {w}?" for t, w in zip(topics, g.pick(FILLER), strict=True)]
    q2 = [f"What is the best way to learn {t if d else o}?" for t, o, d in zip(topics, other, dup, strict=True)]
    cols = {"id": np.arange(N), "qid1": 2 * np.arange(N) + 1, "qid2": 2 * np.arange(N) + 2,
            "question1": q1, "question2": q2, "is_duplicate": dup}
    ids = Ids(sample="test_id", test="test_id", values=np.arange(N) - R_TRAIN)
    return assemble(cols, ["is_duplicate"], ids, train_only=["id", "qid1", "qid2"], placeholder=1)


def spooky(rng: np.random.Generator) -> ShapeTables:
    """spooky-author-identification: train.zip, test.zip and sample_submission.zip (zips named
    without ``.csv``) holding ``id,text,author``; one probability column per author."""
    g = Gen(rng)
    author = g.cut(["EAP", "HPL", "MWS"], noise=0.05)
    cues = {"EAP": ("raven", "tell", "heart"), "HPL": ("eldritch", "cyclopean", "gibbous"),
            "MWS": ("creature", "misery", "frankly")}
    ids = np.array([f"id{n:05d}" for n in g.rng.permutation(27971)[:N]], dtype=object)
    return assemble({"text": g.words(author, cues, FILLER), "author": author}, ["author"], Ids.shared("id", ids),
                    classes=["EAP", "HPL", "MWS"])


def commonlit(rng: np.random.Generator) -> ShapeTables:
    """commonlitreadabilityprize: ``id,url_legal,license,excerpt,target,standard_error`` (the
    last only in train.csv); ``url_legal`` and ``license`` mostly empty."""
    g = Gen(rng)
    easy = np.where(g.score > 0, "easy", "hard")
    cues = {"easy": ("cat", "sun", "fun", "play"), "hard": ("notwithstanding", "epistemology", "hitherto", "whereupon")}
    url = np.where(g.rng.random(N) < 0.2, "https://simple.wikipedia.org/wiki/Leaf", "")
    cols = {"url_legal": url, "license": np.where(url == "", "", "CC BY-SA 3.0"),
            "excerpt": g.words(easy, cues, FILLER), "target": np.round(-1 + g.score, 6),
            "standard_error": np.round(0.45 + 0.02 * g.rng.random(N), 6)}
    return assemble(cols, ["target"], Ids.shared("id", g.hex_ids(9)), train_only=["standard_error"], placeholder=0)


def patent_phrases(rng: np.random.Generator) -> ShapeTables:
    """us-patent-phrase-to-phrase-matching: ``id,anchor,target,context,score`` where ``target``
    is a phrase (a feature) and ``score`` the label in quarter steps; Kaggle scores Pearson."""
    g = Gen(rng)
    score = g.cut([0.0, 0.25, 0.5, 0.75, 1.0], noise=0.05).astype(float)
    anchors = g.pick(["abatement", "acid absorption", "adjust gas flow", "bear bracket"])
    words = {0.0: "unrelated", 0.25: "loosely", 0.5: "similar", 0.75: "close", 1.0: "identical"}
    cols = {"anchor": anchors, "target": [f"{words[s]} {a}" for s, a in zip(score, anchors, strict=True)],
            "context": g.pick(["A47", "B01", "C07", "F16"]), "score": score}
    return assemble(cols, ["score"], Ids.shared("id", g.hex_ids(16)), placeholder=0)


def essay_scoring(rng: np.random.Generator) -> ShapeTables:
    """learning-agency-lab-automated-essay-scoring-2: ``essay_id,full_text,score`` 1..6, QWK."""
    g = Gen(rng)
    score = g.cut([1, 2, 3, 4, 5, 6], noise=0.05).astype(np.int64)
    cues = {s: (f"level{s}", f"grade{s}", f"mark{s}") for s in range(1, 7)}
    return assemble({"full_text": g.words(score, cues, FILLER, (20, 30)), "score": score}, ["score"],
                    Ids.shared("essay_id", g.hex_ids(7)), placeholder=1)


def mercari(rng: np.random.Generator) -> ShapeTables:
    """mercari-price-suggestion-challenge (stage 2): train.tsv (shipped 7z, zipped here),
    test_stg2.tsv.zip and sample_submission_stg2.csv.zip; ``train_id`` / ``test_id``."""
    g = Gen(rng)
    brand = g.cut(["", "Nike", "Apple", "Chanel"])
    cols = {"train_id": np.arange(N), "name": g.pick(["Shirt", "Phone case", "Bag", "Shoes"]),
            "item_condition_id": g.ints(1, 5), "category_name": g.pick(["Men/Tops/T-shirts", "Women/Bags/Totes"]),
            "brand_name": brand, "price": np.round(np.exp(3 + 0.8 * g.score), 0),
            "shipping": g.ints(0, 1), "item_description": g.words(np.where(g.score > 0, "lux", "cheap"),
                                                                  {"lux": ("mint", "genuine"), "cheap": ("worn", "used")},
                                                                  FILLER)}
    ids = Ids(sample="test_id", test="test_id", values=np.arange(N) - R_TRAIN)
    return assemble(cols, ["price"], ids, train_only=["train_id"], placeholder=26.738,
                    train_order=["train_id", "name", "item_condition_id", "category_name", "brand_name", "price",
                                 "shipping", "item_description"])
