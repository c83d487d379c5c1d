"""Helpers the test modules share (not tests themselves): the environment of a test server, the
``synthd`` command line, Prometheus scrapes, fine-tuning waits and PEFT adapters. Fixtures live in the
``conftest.py`` files; what a test calls with arguments lives here."""
