-- LearnFlow: coding challenges and their test cases.
CREATE TABLE IF NOT EXISTS exercises (
    id          SERIAL PRIMARY KEY,
    title       VARCHAR(255) NOT NULL,
    description TEXT,
    difficulty  VARCHAR(20)
                CONSTRAINT exercises_difficulty_check CHECK (difficulty IN ('beginner', 'intermediate', 'advanced')),
    test_cases  JSONB,
    solution    TEXT,
    topic       VARCHAR(100)
);

CREATE INDEX IF NOT EXISTS idx_exercises_topic ON exercises (topic);
CREATE INDEX IF NOT EXISTS idx_exercises_difficulty ON exercises (difficulty);
