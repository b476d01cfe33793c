-- LearnFlow: code submitted by students for exercises.
CREATE TABLE IF NOT EXISTS submissions (
    id           SERIAL PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    exercise_id  INTEGER NOT NULL REFERENCES exercises (id) ON DELETE CASCADE,
    code         TEXT NOT NULL,
    feedback     TEXT,
    score        INTEGER
                 CONSTRAINT submissions_score_check CHECK (score BETWEEN 0 AND 100),
    submitted_at TIMESTAMP DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_submissions_user_id ON submissions (user_id);
CREATE INDEX IF NOT EXISTS idx_submissions_exercise_id ON submissions (exercise_id);
CREATE INDEX IF NOT EXISTS idx_submissions_submitted_at ON submissions (submitted_at DESC);
