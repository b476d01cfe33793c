-- LearnFlow: learning progress, one row per user and topic.
CREATE TABLE IF NOT EXISTS progress (
    id             SERIAL PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    topic          VARCHAR(255) NOT NULL,
    mastery_score  INTEGER DEFAULT 0
                   CONSTRAINT progress_mastery_score_check CHECK (mastery_score BETWEEN 0 AND 100),
    last_practiced TIMESTAMP,
    streak_days    INTEGER DEFAULT 0,
    CONSTRAINT progress_user_id_topic_key UNIQUE (user_id, topic)
);

CREATE INDEX IF NOT EXISTS idx_progress_user_id ON progress (user_id);
CREATE INDEX IF NOT EXISTS idx_progress_topic ON progress (topic);
CREATE INDEX IF NOT EXISTS idx_progress_mastery ON progress (mastery_score);
