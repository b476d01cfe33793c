-- LearnFlow: Python modules and learning paths.
CREATE TABLE IF NOT EXISTS curriculum (
    id                SERIAL PRIMARY KEY,
    module_name       VARCHAR(255) NOT NULL,
    topic_name        VARCHAR(255) NOT NULL,
    order_index       INTEGER,
    dependencies      JSONB,
    estimated_minutes INTEGER
);

CREATE INDEX IF NOT EXISTS idx_curriculum_module ON curriculum (module_name);
CREATE INDEX IF NOT EXISTS idx_curriculum_order ON curriculum (order_index);
