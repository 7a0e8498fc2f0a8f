"""Core layer: the catalog (what runs), deployment specs (how it is deployed), the project's
settings and the SyncJob repository. Imports nothing else of the project.

    catalog.yaml, catalog.py   the catalog and its loading        specs.py      one spec per deployment
    flags.py                   what each script may be given      prefect_yaml  prefect.yaml from the specs
    plans.py                   a request -> the checked steps     settings.py   POLIGRAPH_* settings
                                                                  syncjob.py    the app's SyncJob table

See docs/architecture.md for the layers and who owns what.
"""
