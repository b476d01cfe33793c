DROP TRIGGER IF EXISTS users_set_updated_at ON users;
DROP FUNCTION IF EXISTS learnflow_set_updated_at();
DROP TABLE IF EXISTS users;
