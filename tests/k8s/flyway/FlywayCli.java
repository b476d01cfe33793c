// Flyway's own engine (flyway-core) driven from the command line: `migrate`, `info` and
// `repair`, with the URL, user, password and locations from FLYWAY_* environment variables. It stands in
// for flyway-commandline 13.12.2, which Maven Central serves but which cannot start here: its
// Main loads org.flywaydb.mcp.McpConfigurationLoader from flyway-command-mcp, which Maven
// Central does not serve.
import org.flywaydb.core.Flyway;
import org.flywaydb.core.api.MigrationInfo;

public class FlywayCli {
    public static void main(String[] args) {
        Flyway flyway = Flyway.configure()
            .dataSource(System.getenv("FLYWAY_URL"), System.getenv("FLYWAY_USER"), System.getenv("FLYWAY_PASSWORD"))
            .locations("filesystem:" + System.getenv("FLYWAY_LOCATIONS"))
            .load();
        switch (args[0]) {
            case "migrate":
                System.out.println("applied " + flyway.migrate().migrationsExecuted);
                break;
            case "repair":
                flyway.repair();
                break;
            case "info":
                for (MigrationInfo info : flyway.info().all()) {
                    System.out.println(info.getVersion() + "|" + info.getDescription() + "|" + info.getState().getDisplayName());
                }
                break;
            default:
                System.err.println("usage: FlywayCli migrate|info|repair");
                System.exit(2);
        }
    }
}
