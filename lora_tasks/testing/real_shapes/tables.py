"""Shapes of real tabular, time-series and pixel-table competitions (synthetic values, real layout).

Each builder names its source competition; the header, file names and packing are that
competition's (where a header is long, the comment says which part is kept). Where Kaggle scores
with a metric the fake server does not have (RMSPE, SMAPE, R², Gini, macro F1), the shape's
listing names the nearest one it has, and the comment says so.
"""

from __future__ import annotations

import numpy as np

from ..shapes import ShapeTables
from ._build import R_TRAIN, Gen, Ids, N, assemble


def digit_recognizer(rng: np.random.Generator) -> ShapeTables:
    """digit-recognizer: train.csv ``label,pixel0..pixel783``, test.csv the pixels only, and
    sample_submission.csv ``ImageId,Label`` numbering test.csv's rows 1..N (three digits here)."""
    g = Gen(rng)
    label = g.cut([0, 1, 2], noise=0.1).astype(np.int64)
    pixels = {f"pixel{i}": np.zeros(N, dtype=np.int64) for i in range(784)}
    for i, centre in enumerate((300, 400, 500)):
        for j in range(6):
            pixels[f"pixel{centre + j}"] = np.where(label == i, g.ints(120, 255), g.ints(0, 30))
    return assemble({"label": label, **pixels}, ["label"], Ids(sample="ImageId", row_numbers_from=1),
                    value_columns=["Label"], train_order=["label", *pixels])


def restaurant_revenue(rng: np.random.Generator) -> ShapeTables:
    """restaurant-revenue-prediction: train.csv.zip and test.csv.zip inside the download, and
    sampleSubmission.csv ``Id,Prediction`` for train's ``revenue``; test ids restart at 0."""
    g = Gen(rng)
    cols = {
        "Open Date": g.timestamps("1996-05-08", "17D", "%m/%d/%Y"),
        "City": g.pick(["İstanbul", "Ankara", "İzmir", "Bursa"]),
        "City Group": g.cut(["Other", "Big Cities"]),
        "Type": g.pick(["FC", "IL", "DT"]),
        **{f"P{i}": (g.num(1.0, 0.5, 2.0, 5.0, 0).astype(np.int64) if i <= 3 else g.ints(0, 10)) for i in range(1, 38)},
        "revenue": g.num(1.0, 0.2, 1.2e6, 4.5e6, 1),
    }
    ids = np.concatenate([np.arange(R_TRAIN), np.arange(N - R_TRAIN)])
    return assemble(cols, ["revenue"], Ids.shared("Id", ids), value_columns=["Prediction"], placeholder=4453532.6)


def rossmann(rng: np.random.Generator) -> ShapeTables:
    """rossmann-store-sales: train.csv has no id and a train-only ``Customers``; test.csv has
    ``Id``; sample_submission.csv ``Id,Sales``; store.csv beside them. Kaggle scores RMSPE."""
    g = Gen(rng)
    date = g.timestamps("2015-07-31", "-1D", "%Y-%m-%d")
    cols = {
        "Store": g.ints(1, 1115), "DayOfWeek": (np.arange(N) % 7) + 1, "Date": date,
        "Sales": np.round(np.exp(8.5 + 0.4 * g.score)).astype(np.int64),
        "Customers": np.round(np.exp(6.5 + 0.4 * g.score)).astype(np.int64),
        "Open": np.ones(N, dtype=np.int64), "Promo": (g.score + g.noise(0.5) > 0).astype(np.int64),
        "StateHoliday": g.pick(["0", "0", "0", "a"]), "SchoolHoliday": g.ints(0, 1),
    }
    ids = Ids(sample="Id", test="Id", values=np.arange(1, N + 1) - R_TRAIN)
    return assemble(cols, ["Sales"], ids, train_only=["Customers"], placeholder=0,
                    train_order=["Store", "DayOfWeek", "Date", "Sales", "Customers", "Open", "Promo", "StateHoliday",
                                 "SchoolHoliday"])


def store_sales(rng: np.random.Generator) -> ShapeTables:
    """store-sales-time-series-forecasting: ``id,date,store_nbr,family,sales,onpromotion``,
    sample ``id,sales``; oil.csv, holidays_events.csv, stores.csv and transactions.csv beside."""
    g = Gen(rng)
    cols = {
        "date": g.timestamps("2017-01-01", "h", "%Y-%m-%d"), "store_nbr": g.ints(1, 54),
        "family": g.cut(["AUTOMOTIVE", "BEAUTY", "BREAD/BAKERY", "GROCERY I"]),
        "sales": np.round(np.exp(3 + g.score) - 1, 3), "onpromotion": g.num(2.0, 0.5, 2.0, 5.0, 0).clip(0),
    }
    return assemble(cols, ["sales"], Ids.shared("id", np.arange(N)), placeholder=0.0,
                    train_order=["id", "date", "store_nbr", "family", "sales", "onpromotion"])


def demand_forecasting(rng: np.random.Generator) -> ShapeTables:
    """demand-forecasting-kernels-only: train.csv ``date,store,item,sales`` has no id, test.csv
    ``id,date,store,item``; sample ``id,sales``. Kaggle scores SMAPE."""
    g = Gen(rng)
    cols = {"date": g.timestamps("2013-01-01", "D", "%Y-%m-%d"), "store": g.cut([1, 2, 3, 4]).astype(np.int64),
            "item": g.ints(1, 50), "sales": np.round(60 + 25 * g.score + g.noise(4)).clip(1).astype(np.int64)}
    return assemble(cols, ["sales"], Ids(sample="id", test="id", values=np.arange(N) - R_TRAIN), placeholder=52)


def tps_jul_2021(rng: np.random.Generator) -> ShapeTables:
    """tabular-playground-series-jul-2021: three targets, hourly ``date_time`` as the id; Kaggle
    scores mean columnwise RMSLE."""
    g = Gen(rng)
    targets = ["target_carbon_monoxide", "target_benzene", "target_nitrogen_oxides"]
    cols = {"deg_C": g.num(0.5, 1, 5, 15, 1), "relative_humidity": g.noise(10, 45, 1),
            "absolute_humidity": g.noise(0.3, 1.0), **{f"sensor_{i}": g.num(1.0, 0.3, 200, 1000, 1) for i in range(1, 6)},
            targets[0]: np.round(np.exp(0.5 + 0.5 * g.score), 1), targets[1]: np.round(np.exp(2 + 0.6 * g.score), 1),
            targets[2]: np.round(np.exp(5 + 0.5 * g.score), 1)}
    stamps = g.timestamps("2010-03-10 18:00:00", "h", "%Y-%m-%d %H:%M:%S")
    return assemble(cols, targets, Ids.shared("date_time", stamps), placeholder=2.0)


def santander(rng: np.random.Generator) -> ShapeTables:
    """santander-customer-transaction-prediction: ``ID_code,target,var_0..var_199``."""
    g = Gen(rng)
    cols = {"target": (g.score > 0.8).astype(np.int64),
            **{f"var_{i}": (g.num(1.0, 0.6, 3, 10) if i < 4 else g.noise(3, 10)) for i in range(200)}}
    codes = np.array([f"train_{i}" for i in range(R_TRAIN)] + [f"test_{i}" for i in range(N - R_TRAIN)], dtype=object)
    return assemble(cols, ["target"], Ids.shared("ID_code", codes), placeholder=0,
                    train_order=["ID_code", "target", *(f"var_{i}" for i in range(200))])


def otto(rng: np.random.Generator) -> ShapeTables:
    """otto-group-product-classification-challenge: ``id,feat_1..feat_93,target`` with target
    ``Class_1..Class_9``, and sampleSubmission.csv one probability column per class."""
    g = Gen(rng)
    classes = [f"Class_{i}" for i in range(1, 10)]
    cols = {**{f"feat_{i}": (g.num(1.0, 0.3, 3, 6, 0).clip(0).astype(np.int64) if i <= 5 else g.ints(0, 3))
               for i in range(1, 94)}, "target": g.cut(classes, noise=0.1)}
    return assemble(cols, ["target"], Ids.shared("id", np.arange(1, N + 1)), classes=classes)


def leaf(rng: np.random.Generator) -> ShapeTables:
    """leaf-classification: train.csv.zip ``id,species,margin1..64,shape1..64,texture1..64``,
    sample_submission.csv.zip one column per species (4 of the 99 here)."""
    g = Gen(rng)
    species = ["Acer_Capillipes", "Acer_Circinatum", "Acer_Mono", "Acer_Opalus"]
    cols = {"species": g.cut(species, noise=0.1),
            **{f"{kind}{i}": (g.num(1.0, 0.3, 0.01, 0.02, 6) if i <= 2 else g.noise(0.005, 0.01, 6))
               for kind in ("margin", "shape", "texture") for i in range(1, 65)}}
    return assemble(cols, ["species"], Ids.shared("id", g.rng.permutation(np.arange(1, 1600))[:N]), classes=species)


def forest_cover(rng: np.random.Generator) -> ShapeTables:
    """forest-cover-type-prediction: ``Id``, ten terrain columns, ``Wilderness_Area1..4``,
    ``Soil_Type1..40``, ``Cover_Type`` 1..7; sampleSubmission.csv ``Id,Cover_Type``."""
    g = Gen(rng)
    terrain = ["Elevation", "Aspect", "Slope", "Horizontal_Distance_To_Hydrology", "Vertical_Distance_To_Hydrology",
               "Horizontal_Distance_To_Roadways", "Hillshade_9am", "Hillshade_Noon", "Hillshade_3pm",
               "Horizontal_Distance_To_Fire_Points"]
    cols: dict[str, np.ndarray] = {t: (g.num(1.0, 0.2, 300, 2700, 0) if t == "Elevation" else g.noise(50, 200, 0))
                                   for t in terrain}
    cols["Elevation"] = cols["Elevation"].astype(np.int64)
    area = g.cut([1, 2, 3, 4]).astype(np.int64)
    cols |= {f"Wilderness_Area{i}": (area == i).astype(np.int64) for i in range(1, 5)}
    cols |= {f"Soil_Type{i}": g.ints(0, 1) * (i % 7 == 0) for i in range(1, 41)}
    cols["Cover_Type"] = g.cut(list(range(1, 8)), noise=0.1).astype(np.int64)
    return assemble(cols, ["Cover_Type"], Ids.shared("Id", np.arange(1, N + 1)), placeholder=1)


def mercedes(rng: np.random.Generator) -> ShapeTables:
    """mercedes-benz-greener-manufacturing: all three files zipped inside the download;
    ``ID,y,X0..X8`` (no X7) then binary ``X10..``, of which the first fifty are kept. Kaggle
    scores R²."""
    g = Gen(rng)
    cols = {"y": g.num(1.0, 0.2, 10, 100, 2),
            **{f"X{i}": g.cut(["a", "ak", "az", "y"]) if i == 0 else g.pick(["a", "b", "c", "x"]) for i in (0, 1, 2, 3, 4, 5, 6, 8)},
            **{f"X{i}": (g.score + g.noise(1) > 0).astype(np.int64) if i < 13 else g.ints(0, 1) for i in range(10, 60)}}
    return assemble(cols, ["y"], Ids.shared("ID", np.arange(0, 2 * N, 2)), placeholder=100.669318)


def home_credit(rng: np.random.Generator) -> ShapeTables:
    """home-credit-default-risk: application_train.csv / application_test.csv (the first
    columns of 122, and the EXT_SOURCE ones), sample_submission.csv ``SK_ID_CURR,TARGET``,
    bureau.csv and previous_application.csv beside them."""
    g = Gen(rng)
    cols = {"TARGET": (g.score > 0.9).astype(np.int64), "NAME_CONTRACT_TYPE": g.pick(["Cash loans", "Revolving loans"]),
            "CODE_GENDER": g.pick(["M", "F"]), "FLAG_OWN_CAR": g.pick(["Y", "N"]), "FLAG_OWN_REALTY": g.pick(["Y", "N"]),
            "CNT_CHILDREN": g.ints(0, 3), "AMT_INCOME_TOTAL": g.noise(50000, 170000, 1),
            "AMT_CREDIT": g.noise(200000, 600000, 1), "AMT_ANNUITY": g.noise(9000, 27000, 1),
            "DAYS_BIRTH": -g.ints(7500, 25000), "EXT_SOURCE_1": g.num(-1, 0.5, 0.1, 0.5, 6),
            "EXT_SOURCE_2": g.num(-1, 0.5, 0.1, 0.5, 6), "EXT_SOURCE_3": g.noise(0.2, 0.5, 6)}
    return assemble(cols, ["TARGET"], Ids.shared("SK_ID_CURR", np.arange(100002, 100002 + N)), placeholder=0.5)


def ion_switching(rng: np.random.Generator) -> ShapeTables:
    """liverpool-ion-switching: ``time,signal,open_channels`` with ``time`` written to four
    decimals (the id, kept as written: ``500.0010``); Kaggle scores macro F1."""
    g = Gen(rng)
    channels = g.cut([0, 1, 2, 3], noise=0.1).astype(np.int64)
    times = np.array([f"{0.0001 * (i + 1):.4f}" for i in range(R_TRAIN)]
                     + [f"{500 + 0.0001 * (i + 1):.4f}" for i in range(N - R_TRAIN)], dtype=object)
    cols = {"signal": np.round(channels * 1.2 - 2.7 + g.noise(0.25), 4), "open_channels": channels}
    return assemble(cols, ["open_channels"], Ids.shared("time", times), placeholder=0)


def taxi_trip_duration(rng: np.random.Generator) -> ShapeTables:
    """nyc-taxi-trip-duration: train.zip, test.zip and sample_submission.zip holding the CSVs;
    ``dropoff_datetime`` only in train.csv; RMSLE."""
    g = Gen(rng)
    pickup = g.timestamps("2016-03-14 17:24:55", "37min", "%Y-%m-%d %H:%M:%S")
    cols = {"vendor_id": g.ints(1, 2), "pickup_datetime": pickup, "dropoff_datetime": pickup,
            "passenger_count": g.ints(1, 6), "pickup_longitude": g.noise(0.03, -73.98, 6),
            "pickup_latitude": g.noise(0.03, 40.75, 6), "dropoff_longitude": g.num(0.03, 0.005, 1, -73.97, 6),
            "dropoff_latitude": g.num(0.03, 0.005, 1, 40.75, 6), "store_and_fwd_flag": g.pick(["N", "N", "Y"]),
            "trip_duration": np.round(np.exp(6.5 + 0.6 * g.score)).astype(np.int64)}
    ids = np.array([f"id{n:07d}" for n in g.rng.permutation(3_000_000)[:N]], dtype=object)
    return assemble(cols, ["trip_duration"], Ids.shared("id", ids), train_only=["dropoff_datetime"], placeholder=959)


def taxi_fare(rng: np.random.Generator) -> ShapeTables:
    """new-york-city-taxi-fare-prediction: the id is ``key``, a timestamp string
    (``2015-01-27 13:08:24.0000002``); ``key,fare_amount,pickup_datetime,...,passenger_count``."""
    g = Gen(rng)
    stamps = g.timestamps("2015-01-27 13:08:24", "53min", "%Y-%m-%d %H:%M:%S")
    cols = {"fare_amount": np.round(11 + 4 * g.score, 2).clip(2.5), "pickup_datetime": [f"{s} UTC" for s in stamps],
            "pickup_longitude": g.noise(0.03, -73.98, 6), "pickup_latitude": g.noise(0.03, 40.75, 6),
            "dropoff_longitude": g.num(0.02, 0.004, 1, -73.97, 6), "dropoff_latitude": g.num(0.02, 0.004, 1, 40.75, 6),
            "passenger_count": g.ints(1, 6)}
    keys = np.array([f"{s}.{i:07d}" for i, s in enumerate(stamps)], dtype=object)
    return assemble(cols, ["fare_amount"], Ids.shared("key", keys), placeholder=11.35)


CRIMES = ["ARSON", "ASSAULT", "BAD CHECKS", "BRIBERY", "BURGLARY"]


def sf_crime(rng: np.random.Generator) -> ShapeTables:
    """sf-crime: train.csv.zip, test.csv.zip and sampleSubmission.csv.zip inside the download;
    train has no id and two train-only columns; the sample one column per category (the first
    five of 39 here)."""
    g = Gen(rng)
    cols = {"Dates": g.timestamps("2015-05-13 23:53:00", "-3h", "%Y-%m-%d %H:%M:%S"), "Category": g.cut(CRIMES, 0.1),
            "Descript": g.pick(["WARRANT ARREST", "TRAFFIC VIOLATION"]),
            "DayOfWeek": g.pick(["Monday", "Wednesday", "Friday"]), "PdDistrict": g.pick(["NORTHERN", "PARK", "MISSION"]),
            "Resolution": g.pick(["ARREST, BOOKED", "NONE"]), "Address": g.pick(["OAK ST / LAGUNA ST", "800 Block of BRYANT ST"]),
            "X": g.num(0.02, 0.005, 1, -122.42, 6), "Y": g.num(0.02, 0.005, 1, 37.77, 6)}
    ids = Ids(sample="Id", test="Id", values=np.arange(N) - R_TRAIN)
    return assemble(cols, ["Category"], ids, classes=CRIMES, train_only=["Descript", "Resolution"])


S3E18_FEATURES = ["BertzCT", "Chi1", "Chi1n", "Chi1v", "Chi2n", "Chi2v", "Chi3v", "Chi4n", "EState_VSA1", "EState_VSA2",
          "ExactMolWt", "FpDensityMorgan1", "FpDensityMorgan2", "FpDensityMorgan3", "HallKierAlpha", "HeavyAtomMolWt",
          "Kappa3", "MaxAbsEStateIndex", "MinEStateIndex", "NumHeteroatoms", "PEOE_VSA10", "PEOE_VSA14", "PEOE_VSA6",
          "PEOE_VSA7", "PEOE_VSA8", "SMR_VSA10", "SMR_VSA5", "SlogP_VSA3", "VSA_EState9", "fr_COO", "fr_COO2"]


def enzyme_substrates(rng: np.random.Generator) -> ShapeTables:
    """playground-series-s3e18: train.csv has six 0/1 targets ``EC1..EC6``, the sample asks for
    ``EC1,EC2`` only (EC3..EC6 are train-only columns); mean columnwise AUC."""
    g = Gen(rng)
    cols: dict[str, np.ndarray] = {c: (g.num(1.0, 0.5, 10, 50, 3) if i < 3 else g.noise(10, 50, 3))
                                   for i, c in enumerate(S3E18_FEATURES)}
    cols["EC1"] = (g.score > -0.3).astype(np.int64)
    cols["EC2"] = (cols["Chi1n"] + g.noise(5) > 50).astype(np.int64)
    cols |= {f"EC{i}": g.ints(0, 1) for i in range(3, 7)}
    return assemble(cols, ["EC1", "EC2"], Ids.shared("id", np.arange(N)), placeholder=0.5,
                    train_only=["EC3", "EC4", "EC5", "EC6"])


OUTCOMES = ["Adoption", "Died", "Euthanasia", "Return_to_owner", "Transfer"]


def shelter_outcomes(rng: np.random.Generator) -> ShapeTables:
    """shelter-animal-outcomes: train.csv.gz, test.csv.gz and sample_submission.csv.gz; train's
    ``AnimalID`` and ``OutcomeSubtype`` are train-only, test's id is ``ID``; one column per outcome."""
    g = Gen(rng)
    cols = {"AnimalID": np.array([f"A{n}" for n in g.rng.permutation(900000)[:N]], dtype=object),
            "Name": g.pick(["Hambone", "Emily", "Pearce", ""]),
            "DateTime": g.timestamps("2014-02-12 18:22:00", "7h", "%Y-%m-%d %H:%M:%S"),
            "OutcomeType": g.cut(OUTCOMES, 0.1), "OutcomeSubtype": g.pick(["", "Partner", "Suffering"]),
            "AnimalType": g.pick(["Dog", "Cat"]), "SexuponOutcome": g.pick(["Neutered Male", "Spayed Female"]),
            "AgeuponOutcome": g.cut(["3 weeks", "2 months", "1 year", "5 years", "10 years"], 0.2),
            "Breed": g.pick(["Shetland Sheepdog Mix", "Domestic Shorthair Mix"]), "Color": g.pick(["Brown/White", "Cream Tabby"])}
    ids = Ids(sample="ID", test="ID", values=np.arange(N) - R_TRAIN + 1)
    return assemble(cols, ["OutcomeType"], ids, classes=OUTCOMES, train_only=["AnimalID", "OutcomeSubtype"])
