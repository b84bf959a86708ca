"""The user-study tables of the workspace database (schema version 2; the store creates
them in a fresh database and adds them to an older one, see ``core.session.store.MIGRATIONS``)."""

# A study's design, its participants (an unguessable token each, the condition order and
# where they are), every gesture as an event row, and questionnaire answers. Not tied to a workbench: a participant gets a fresh one per condition.
STUDY_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    design TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    token TEXT PRIMARY KEY,
    study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    conditions TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    UNIQUE (study_id, number)
);
CREATE TABLE IF NOT EXISTS study_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    participant TEXT NOT NULL REFERENCES participants(token) ON DELETE CASCADE,
    condition TEXT NOT NULL,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    item TEXT,
    payload TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS study_events_by_participant ON study_events (participant, condition);
CREATE TABLE IF NOT EXISTS study_answers (
    participant TEXT NOT NULL REFERENCES participants(token) ON DELETE CASCADE,
    step TEXT NOT NULL,
    instrument TEXT NOT NULL,
    answers TEXT NOT NULL,
    score REAL,
    created REAL NOT NULL,
    PRIMARY KEY (participant, step, instrument)
);
"""
