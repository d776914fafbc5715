# A web server is a base server with a login banner.
class role::webserver {
  include role::base
  include profile::banner
}
