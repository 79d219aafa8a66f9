"""Shapes rebuilt from the file layouts of real past Kaggle competitions.

Why: the shapes of :mod:`lora_tasks.testing.shapes` are the ones we thought of; real
competitions name, pack and lay out their files in ways nobody plans for (``id,prediction``
against train's ``label``, ids that are test.csv's row numbers, ``train.csv.zip`` inside the
download, ``train.tsv``, ``.csv.gz``, the id only in test.csv). Each shape here keeps one
competition's headers, file names and packing (read from public copies of its files), with
synthetic values that carry a learnable signal; its slug is ``real-<the competition's slug>``.
The suite runs each end to end with no config (tests/test_shape_suite.py).
"""

from __future__ import annotations

from ..shapes import ACCURACY, SHAPES, CompetitionShape, ShapeFiles, build_all_shapes
from ..shapes import ShapeExpectation as E
from . import tables as t
from . import texts as x

RMSE = "Root Mean Squared Error"
RMSLE = "Root Mean Squared Logarithmic Error"
AUC = "Area Under Receiver Operating Characteristic Curve"
MULTICLASS_LOSS = "Multiclass Loss"
MEAN_AUC = "Mean Columnwise Area Under Receiver Operating Characteristic Curve"
_01 = ("0", "1")


def _zipped(*names: str, suffix: str = ".zip") -> tuple[tuple[str, str], ...]:
    """Each file inside its own zip: ``train.csv`` -> ``train.csv.zip``."""
    return tuple((n, n + suffix) for n in names)


def _bare_zips(*names: str) -> tuple[tuple[str, str], ...]:
    """Each file inside a zip named without ``.csv``: ``train.csv`` -> ``train.zip``."""
    return tuple((n, n.removesuffix(".csv") + ".zip") for n in names)


_THREE = ("train.csv", "test.csv", "sample_submission.csv")
S = CompetitionShape
REAL_SHAPES: tuple[CompetitionShape, ...] = (
    # --- the three layouts that stopped a zero-config run (issue 32)
    S("real-contradictory-my-dear-watson", "text pairs; the sample's `prediction` is train's `label`", E(
        "id", ("label",), "multiclass", "accuracy", ACCURACY, "labels", classes=("0", "1", "2")), x.contradictory_watson),
    S("real-digit-recognizer", "pixel table; test.csv has no id, the sample numbers its rows ImageId 1..N", E(
        "ImageId", ("label",), "multiclass", "accuracy", ACCURACY, "labels", classes=("0", "1", "2")), t.digit_recognizer),
    S("real-sf-crime", "train.csv.zip, test.csv.zip and sampleSubmission.csv.zip inside the download", E(
        "Id", ("Category",), "multiclass", "log_loss", MULTICLASS_LOSS, "probabilities",
        excluded_columns=("Descript", "Resolution"), classes=tuple(sorted(t.CRIMES)),
        sample_file="sampleSubmission.csv"), t.sf_crime,
      files=ShapeFiles(zipped=_zipped("train.csv", "test.csv", "sampleSubmission.csv"))),
    # --- tabular
    S("real-restaurant-revenue-prediction", "inner zips; sample `Prediction` for train's `revenue`; dates", E(
        "Id", ("revenue",), "regression", "rmse", RMSE, "values", sample_file="sampleSubmission.csv"),
      t.restaurant_revenue, files=ShapeFiles(zipped=_zipped("train.csv", "test.csv"))),
    S("real-santander-customer-transaction-prediction", "200 numeric columns, AUC", E(
        "ID_code", ("target",), "binary", "roc_auc", AUC, "probabilities", classes=_01), t.santander),
    S("real-otto-group-product-classification-challenge", "one probability column per class", E(
        "id", ("target",), "multiclass", "log_loss", MULTICLASS_LOSS, "probabilities",
        classes=tuple(f"Class_{i}" for i in range(1, 10)), sample_file="sampleSubmission.csv"), t.otto),
    S("real-leaf-classification", "inner zips; one probability column per species", E(
        "id", ("species",), "multiclass", "log_loss", MULTICLASS_LOSS, "probabilities",
        classes=("Acer_Capillipes", "Acer_Circinatum", "Acer_Mono", "Acer_Opalus")), t.leaf,
      files=ShapeFiles(zipped=_zipped(*_THREE))),
    S("real-forest-cover-type-prediction", "multiclass 1..7, one-hot columns", E(
        "Id", ("Cover_Type",), "multiclass", "accuracy", ACCURACY, "labels", classes=tuple("1234567"),
        sample_file="sampleSubmission.csv"), t.forest_cover),
    S("real-mercedes-benz-greener-manufacturing", "inner zips; upper-case ID", E(
        "ID", ("y",), "regression", "rmse", RMSE, "values"), t.mercedes, files=ShapeFiles(zipped=_zipped(*_THREE))),
    S("real-home-credit-default-risk", "application_train.csv / application_test.csv beside other tables", E(
        "SK_ID_CURR", ("TARGET",), "binary", "roc_auc", AUC, "probabilities", classes=_01), t.home_credit,
      files=ShapeFiles(train="application_train.csv", test="application_test.csv",
                       extra=("bureau.csv", "previous_application.csv"))),
    S("real-playground-series-s3e18", "multi-label: the sample asks for 2 of train's 6 targets", E(
        "id", ("EC1", "EC2"), "multilabel", "mean_columnwise_roc_auc", MEAN_AUC, "probabilities",
        excluded_columns=("EC3", "EC4", "EC5", "EC6"), classes=_01), t.enzyme_substrates),
    S("real-shelter-animal-outcomes", ".csv.gz files; the id only in test.csv; class columns", E(
        "ID", ("OutcomeType",), "multiclass", "log_loss", MULTICLASS_LOSS, "probabilities",
        excluded_columns=("AnimalID", "OutcomeSubtype"), classes=tuple(sorted(t.OUTCOMES)),
        sample_file="sample_submission.csv.gz"), t.shelter_outcomes,
      files=ShapeFiles(train="train.csv.gz", test="test.csv.gz")),
    # --- time series, dates
    S("real-rossmann-store-sales", "dates; train.csv has no id, test.csv's Id; train-only Customers", E(
        "Id", ("Sales",), "regression", "rmse", RMSE, "values", excluded_columns=("Customers",)), t.rossmann,
      files=ShapeFiles(extra=("store.csv",))),
    S("real-store-sales-time-series-forecasting", "dates; four more tables beside", E(
        "id", ("sales",), "regression", "rmsle", RMSLE, "values"), t.store_sales,
      files=ShapeFiles(extra=("oil.csv", "holidays_events.csv", "stores.csv", "transactions.csv"))),
    S("real-demand-forecasting-kernels-only", "dates; the id only in test.csv", E(
        "id", ("sales",), "regression", "mae", "Mean Absolute Error", "values"), t.demand_forecasting),
    S("real-tabular-playground-series-jul-2021", "three targets; the id is a timestamp", E(
        "date_time", ("target_carbon_monoxide", "target_benzene", "target_nitrogen_oxides"), "multitarget_regression",
        "mcrmse", "Mean Columnwise Root Mean Squared Error", "values"), t.tps_jul_2021),
    S("real-liverpool-ion-switching", "the id is a time written to four decimals", E(
        "time", ("open_channels",), "multiclass", "accuracy", ACCURACY, "labels", classes=("0", "1", "2", "3")),
      t.ion_switching),
    S("real-nyc-taxi-trip-duration", "train.zip holding train.csv; a train-only column; RMSLE", E(
        "id", ("trip_duration",), "regression", "rmsle", RMSLE, "values", excluded_columns=("dropoff_datetime",)),
      t.taxi_trip_duration, files=ShapeFiles(zipped=_bare_zips(*_THREE))),
    S("real-new-york-city-taxi-fare-prediction", "the id is a timestamp string", E(
        "key", ("fare_amount",), "regression", "rmse", RMSE, "values"), t.taxi_fare),
    # --- text, text pairs, multi-label text
    S("real-sentiment-analysis-on-movie-reviews", "train.tsv.zip / test.tsv.zip inside the download", E(
        "PhraseId", ("Sentiment",), "multiclass", "accuracy", ACCURACY, "labels", classes=tuple("01234"),
        sample_file="sampleSubmission.csv"), x.movie_reviews,
      files=ShapeFiles(train="train.tsv", test="test.tsv", zipped=_zipped("train.tsv", "test.tsv"))),
    S("real-jigsaw-toxic-comment-classification-challenge", "six labels; every file zipped inside", E(
        "id", x.TOXIC_LABELS, "multilabel", "mean_columnwise_roc_auc", MEAN_AUC, "probabilities", classes=_01),
      x.toxic_comments, files=ShapeFiles(zipped=_zipped(*_THREE, "test_labels.csv"), extra=("test_labels.csv",))),
    S("real-quora-question-pairs", "question pairs; test_id only in test.csv; inner zips", E(
        "test_id", ("is_duplicate",), "binary", "log_loss", "Log Loss", "probabilities",
        excluded_columns=("id", "qid1", "qid2"), classes=_01), x.quora, files=ShapeFiles(zipped=_zipped(*_THREE))),
    S("real-spooky-author-identification", "train.zip / test.zip; one probability column per author", E(
        "id", ("author",), "multiclass", "log_loss", MULTICLASS_LOSS, "probabilities", classes=("EAP", "HPL", "MWS")),
      x.spooky, files=ShapeFiles(zipped=_bare_zips(*_THREE))),
    S("real-commonlitreadabilityprize", "text regression; mostly empty columns; train-only standard_error", E(
        "id", ("target",), "regression", "rmse", RMSE, "values", excluded_columns=("standard_error",)), x.commonlit),
    S("real-us-patent-phrase-to-phrase-matching", "phrase pairs; a feature named `target`", E(
        "id", ("score",), "regression", "rmse", RMSE, "values"), x.patent_phrases),
    S("real-learning-agency-lab-automated-essay-scoring-2", "essays scored 1..6, QWK", E(
        "essay_id", ("score",), "multiclass", "qwk", "Quadratic Weighted Kappa", "labels", classes=tuple("123456")),
      x.essay_scoring),
    S("real-mercari-price-suggestion-challenge", "zipped tsv; test_stg2.tsv; train_id / test_id", E(
        "test_id", ("price",), "regression", "rmsle", RMSLE, "values", excluded_columns=("train_id",),
        sample_file="sample_submission_stg2.csv"), x.mercari,
      files=ShapeFiles(train="train.tsv", test="test_stg2.tsv",
                       zipped=_zipped("train.tsv", "test_stg2.tsv", "sample_submission_stg2.csv"))),
)


def all_shapes() -> tuple[CompetitionShape, ...]:
    """The shapes we thought of (:data:`lora_tasks.testing.shapes.SHAPES`), then those rebuilt
    from real competitions' layouts (:data:`REAL_SHAPES`)."""
    return (*SHAPES, *REAL_SHAPES)


def main(argv: list[str] | None = None) -> None:
    """``python -m lora_tasks.testing.real_shapes DEST``: write every shape (ours and the real
    layouts) under DEST and list them."""
    import argparse  # only the command needs it

    parser = argparse.ArgumentParser(description="Write the Kaggle-shaped test competitions.")
    parser.add_argument("dest", help="folder to write <slug>/ folders into (the fake server's data folder)")
    args = parser.parse_args(argv)
    shapes = {s.slug: s for s in all_shapes()}
    for slug, folder in build_all_shapes(args.dest, tuple(shapes.values())).items():
        e = shapes[slug].expected
        print(f"{slug}: {folder} ({e.task}, {e.metric}, Kaggle metric {e.kaggle_metric!r})")


if __name__ == "__main__":
    main()
