# The role every server has: a message of the day and time synchronisation.
class role::base {
  include profile::base
  include profile::time
}
