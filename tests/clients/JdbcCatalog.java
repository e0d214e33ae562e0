// What a JDBC tool (DBeaver's generic mode, IntelliJ, Metabase) asks a
// PostgreSQL server through the PostgreSQL JDBC driver (Debian's
// libpostgresql-jdbc-java), against `weir serve` (wire::jdbc_*).
//
//   java -cp /usr/share/java/postgresql.jar JdbcCatalog.java PORT USER TOKEN
//
// Prints one JSON object: each step's rows (arrays of strings), or its
// error as {"error": message, "sqlstate": code}.
import java.sql.*;
import java.util.*;

public class JdbcCatalog {
    interface Step { ResultSet run() throws SQLException; }

    static String quote(String s) {
        if (s == null) return "null";
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    static String rows(ResultSet rs) throws SQLException {
        int n = rs.getMetaData().getColumnCount();
        List<String> out = new ArrayList<>();
        while (rs.next()) {
            List<String> row = new ArrayList<>();
            for (int i = 1; i <= n; i++) row.add(quote(rs.getString(i)));
            out.add("[" + String.join(",", row) + "]");
        }
        rs.close();
        return "[" + String.join(",", out) + "]";
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/weir?sslmode=disable";
        Map<String, String> out = new LinkedHashMap<>();
        try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
            DatabaseMetaData md = c.getMetaData();
            Statement s = c.createStatement();
            PreparedStatement p = c.prepareStatement("SELECT double(?) AS d");
            Map<String, Step> steps = new LinkedHashMap<>();
            steps.put("session", () -> s.executeQuery("SELECT current_schema(), session_user, current_database()"));
            steps.put("schemas", md::getSchemas);
            steps.put("catalogs", md::getCatalogs);
            steps.put("tables", () -> md.getTables(null, "public", "%", new String[] {"TABLE", "VIEW"}));
            steps.put("columns", () -> md.getColumns(null, "public", "%", "%"));
            steps.put("functions", () -> md.getFunctions(null, null, "%"));
            steps.put("procedures", () -> md.getProcedures(null, null, "%"));
            steps.put("types", md::getTypeInfo);
            steps.put("quote_ident", () -> s.executeQuery("SELECT quote_ident('plain'), quote_ident('Mixed Case')"));
            steps.put("prepared", () -> { p.setLong(1, 21); return p.executeQuery(); });
            steps.put("unknown", () -> s.executeQuery("SELECT nope(1)"));
            for (Map.Entry<String, Step> e : steps.entrySet()) {
                try {
                    out.put(e.getKey(), rows(e.getValue().run()));
                } catch (SQLException x) {
                    out.put(e.getKey(), "{\"error\":" + quote(x.getMessage()) + ",\"sqlstate\":" + quote(x.getSQLState()) + "}");
                }
            }
        }
        List<String> fields = new ArrayList<>();
        for (Map.Entry<String, String> e : out.entrySet()) fields.add(quote(e.getKey()) + ":" + e.getValue());
        System.out.println("{" + String.join(",", fields) + "}");
    }
}
