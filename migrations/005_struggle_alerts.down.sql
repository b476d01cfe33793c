DROP TABLE IF EXISTS struggle_alerts;
