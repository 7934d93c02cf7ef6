// DynamoDB Local as its own main class runs it, but listening on 127.0.0.1 only, on a port
// the kernel picks.
//
// DynamoDB Local has no bind-address option: its DynamoDBProxyServer builds a Jetty server
// with `new Server(port)`, whose connector listens on every interface. This sets that
// connector's host to loopback and its port to 0 before the server starts, then writes the
// port it got to the file the system property tuneloop.portFile names (whole, by a rename):
// no port is chosen first and bound later, so no other process can take it in between.
// Everything else (arguments, telemetry, the handler) is what ServerRunner.main does.
// tuneloop compiles it once with the JDK's own compiler module (services.py) and runs it
// in place of `java -jar`.
import java.io.File;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import software.amazon.dynamodb.services.local.main.CommandLineInput;
import software.amazon.dynamodb.services.local.main.ServerRunner;
import software.amazon.dynamodb.services.local.monitoring.Telemetry;
import software.amazon.dynamodb.services.local.monitoring.TelemetryUtil;
import software.amazon.dynamodb.services.local.server.DynamoDBProxyServer;

public class LoopbackDynamoDBLocal {
    public static void main(String[] args) throws Exception {
        CommandLineInput input = new CommandLineInput(args);
        if (!input.init()) {
            System.exit(2);
        }
        DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(args);
        Field field = DynamoDBProxyServer.class.getDeclaredField("server");
        field.setAccessible(true);
        Server server = (Server) field.get(proxy);
        ServerConnector connector = (ServerConnector) server.getConnectors()[0];
        connector.setHost("127.0.0.1");
        connector.setPort(0);
        String setup = TelemetryUtil.getSetupType(new File("/.dockerenv"), new File("pom.xml"));
        Telemetry.configureTelemetry(
                setup, ServerRunner.getSetupMode(input), TelemetryUtil.isTelemetryEnabled(input.isDisableTelemetry()));
        proxy.start();
        Path portFile = Paths.get(System.getProperty("tuneloop.portFile"));
        Path partial = Paths.get(portFile + ".tmp");
        Files.write(partial, Integer.toString(connector.getLocalPort()).getBytes(StandardCharsets.US_ASCII));
        Files.move(partial, portFile, StandardCopyOption.ATOMIC_MOVE);
    }
}
