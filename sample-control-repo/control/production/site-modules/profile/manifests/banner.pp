# The login banner shown before authentication.
class profile::banner {
  include banner
}
