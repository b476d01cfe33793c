// One query through pgjdbc, as a Java app makes it: the JDBC URL from JDBC_URL (never argv,
// it holds the password), the SQL from argv; the first column of the first row on stdout.
// Run with the JDK's single-file launcher: java -cp postgresql.jar Query.java SQL
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.Statement;

public class Query {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(System.getenv("JDBC_URL"));
                Statement s = c.createStatement();
                ResultSet r = s.executeQuery(args[0])) {
            r.next();
            System.out.println(r.getString(1));
        }
    }
}
