// The local stack's HiveMQ CE (POSFLOW_MQTT_BROKER=hivemq): the embedded broker with the same
// logins and ACL as Mosquitto's (deploy/local/stack.sh writes both files for either broker), as
// an embedded extension. HiveMQ CE has no password file or ACL of its own.
//
//   java -cp <classpath> Launcher <config-folder> <data-folder> <users-file> <acl-file>
//
// users-file: `name:password` lines. acl-file: Mosquitto's format (`user NAME`, then
// `topic read|write FILTER` lines). On the TLS listener the client certificate's CN is the
// username and no password is asked (Mosquitto: use_identity_as_username). As with Mosquitto's
// use_username_as_clientid, a client must connect with its username as its client id.

import com.hivemq.embedded.EmbeddedExtension;
import com.hivemq.embedded.EmbeddedHiveMQ;
import com.hivemq.extension.sdk.api.ExtensionMain;
import com.hivemq.extension.sdk.api.auth.PublishAuthorizer;
import com.hivemq.extension.sdk.api.auth.SimpleAuthenticator;
import com.hivemq.extension.sdk.api.auth.parameter.PublishAuthorizerInput;
import com.hivemq.extension.sdk.api.auth.parameter.PublishAuthorizerOutput;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthInput;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthOutput;
import com.hivemq.extension.sdk.api.auth.parameter.TopicPermission;
import com.hivemq.extension.sdk.api.packets.auth.DefaultAuthorizationBehaviour;
import com.hivemq.extension.sdk.api.packets.connect.ConnackReasonCode;
import com.hivemq.extension.sdk.api.packets.publish.AckReasonCode;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartOutput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopOutput;
import com.hivemq.extension.sdk.api.services.Services;
import com.hivemq.extension.sdk.api.services.builder.Builders;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import javax.naming.ldap.LdapName;
import javax.naming.ldap.Rdn;

public final class Launcher {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: Launcher <config-folder> <data-folder> <users-file> <acl-file>");
            System.exit(2);
        }
        Map<String, byte[]> users = users(Path.of(args[2]));
        Map<String, List<String[]>> acl = acl(Path.of(args[3]));
        EmbeddedExtension logins = EmbeddedExtension.builder()
                .withId("posflow-logins").withName("posflow logins and ACL").withVersion("1")
                .withPriority(1000).withStartPriority(1000)
                .withExtensionMain(new ExtensionMain() {
                    @Override
                    public void extensionStart(ExtensionStartInput in, ExtensionStartOutput out) {
                        Services.securityRegistry().setAuthenticatorProvider(i -> new Logins(users, acl));
                        Services.securityRegistry().setAuthorizerProvider(i -> new Publishes(acl));
                    }

                    @Override
                    public void extensionStop(ExtensionStopInput in, ExtensionStopOutput out) {}
                })
                .build();
        EmbeddedHiveMQ hivemq = EmbeddedHiveMQ.builder()
                .withConfigurationFolder(Path.of(args[0]))
                .withDataFolder(Path.of(args[1]))
                .withExtensionsFolder(Path.of(args[1]).resolve("extensions"))
                .withEmbeddedExtension(logins)
                .build();
        hivemq.start().join();
        System.out.println("hivemq: started");
        Runtime.getRuntime().addShutdownHook(new Thread(() -> hivemq.stop().join()));
        Thread.currentThread().join();
    }

    static Map<String, byte[]> users(Path file) throws Exception {
        Map<String, byte[]> users = new HashMap<>();
        for (String line : Files.readAllLines(file)) {
            int colon = line.indexOf(':');
            if (colon > 0) {
                users.put(line.substring(0, colon), line.substring(colon + 1).getBytes(StandardCharsets.UTF_8));
            }
        }
        return users;
    }

    /** Per user, its (read|write, topic filter) lines. */
    static Map<String, List<String[]>> acl(Path file) throws Exception {
        Map<String, List<String[]>> acl = new HashMap<>();
        List<String[]> current = null;
        for (String line : Files.readAllLines(file)) {
            String[] w = line.trim().split("\\s+");
            if (w.length == 2 && w[0].equals("user")) {
                current = acl.computeIfAbsent(w[1], k -> new ArrayList<>());
            } else if (w.length == 3 && w[0].equals("topic") && current != null) {
                current.add(new String[] {w[1], w[2]});
            }
        }
        return acl;
    }

    /** A user's ACL lines as permissions (built per connection: the builders exist only once
     *  the extension system runs). `write` is publish, `read` subscribe. */
    static List<TopicPermission> permissions(List<String[]> lines) {
        List<TopicPermission> out = new ArrayList<>();
        for (String[] l : lines) {
            out.add(Builders.topicPermission()
                    .topicFilter(l[1])
                    .type(TopicPermission.PermissionType.ALLOW)
                    .activity(l[0].equals("write") ? TopicPermission.MqttActivity.PUBLISH
                            : TopicPermission.MqttActivity.SUBSCRIBE)
                    .build());
        }
        return out;
    }

    /** Password (or client certificate) and client id checked; the user's ACL, nothing else. */
    static final class Logins implements SimpleAuthenticator {
        private final Map<String, byte[]> users;
        private final Map<String, List<String[]>> acl;

        Logins(Map<String, byte[]> users, Map<String, List<String[]>> acl) {
            this.users = users;
            this.acl = acl;
        }

        @Override
        public void onConnect(SimpleAuthInput in, SimpleAuthOutput out) {
            Optional<X509Certificate> cert = in.getConnectionInformation().getClientTlsInformation()
                    .flatMap(t -> t.getClientCertificate());
            String user;
            if (cert.isPresent()) {
                user = commonName(cert.get());
            } else {
                user = in.getConnectPacket().getUserName().orElse("");
                byte[] expected = users.get(user);
                byte[] given = in.getConnectPacket().getPassword().map(b -> {
                    byte[] a = new byte[b.remaining()];
                    b.duplicate().get(a);
                    return a;
                }).orElse(new byte[0]);
                if (expected == null || !MessageDigest.isEqual(expected, given)) {
                    out.failAuthentication(ConnackReasonCode.BAD_USER_NAME_OR_PASSWORD, "bad username or password");
                    return;
                }
            }
            if (user == null || !user.equals(in.getClientInformation().getClientId())) {
                out.failAuthentication(ConnackReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "the client id must be the username");
                return;
            }
            out.getDefaultPermissions().addAll(permissions(acl.getOrDefault(user, List.of())));
            out.getDefaultPermissions().setDefaultBehaviour(DefaultAuthorizationBehaviour.DENY);
            out.authenticateSuccessfully();
        }

        private static String commonName(X509Certificate cert) {
            try {
                for (Rdn rdn : new LdapName(cert.getSubjectX500Principal().getName()).getRdns()) {
                    if (rdn.getType().equalsIgnoreCase("CN")) {
                        return rdn.getValue().toString();
                    }
                }
            } catch (Exception e) {
                return null;
            }
            return null;
        }
    }

    /**
     * Publishes: allowed on the user's `write` filters, else refused with PUBACK "not
     * authorized" and the connection kept — Mosquitto's behaviour. (HiveMQ's default
     * permissions alone would disconnect the client.) The client id is the username (checked
     * at connect).
     */
    static final class Publishes implements PublishAuthorizer {
        private final Map<String, List<String[]>> acl;

        Publishes(Map<String, List<String[]>> acl) {
            this.acl = acl;
        }

        @Override
        public void authorizePublish(PublishAuthorizerInput in, PublishAuthorizerOutput out) {
            String topic = in.getPublishPacket().getTopic();
            for (String[] l : acl.getOrDefault(in.getClientInformation().getClientId(), List.of())) {
                if (l[0].equals("write") && matches(l[1], topic)) {
                    out.authorizeSuccessfully();
                    return;
                }
            }
            // No reason string: rumqttc (the bridge's and the tests' client) drops the connection on a
            // PUBACK that carries one, and Mosquitto sends none.
            out.failAuthorization(AckReasonCode.NOT_AUTHORIZED);
        }

        /** MQTT topic filter matching: `+` one level, `#` the rest. */
        static boolean matches(String filter, String topic) {
            String[] f = filter.split("/", -1);
            String[] t = topic.split("/", -1);
            for (int i = 0; i < f.length; i++) {
                if (f[i].equals("#")) {
                    return true;
                }
                if (i >= t.length || !(f[i].equals("+") || f[i].equals(t[i]))) {
                    return false;
                }
            }
            return f.length == t.length;
        }
    }
}
