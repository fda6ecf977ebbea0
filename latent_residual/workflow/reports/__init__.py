"""Reports: comparison tables, the diagnose report (numbers, pictures, HTML), the coverage alarm's
calibration and the data curve. They read models and data; they train nothing but short diagnostic fits."""
